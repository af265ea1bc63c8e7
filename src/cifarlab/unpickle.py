"""Unpickling what the official python release holds, and nothing else: a pickle from disk
is untrusted, so only the types the CIFAR-10 batches need are admitted and the memo's size
is checked before anything is built."""

from __future__ import annotations

import io
import pickle
import pickletools

from .errors import CifarlabError


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR batch needs: numpy arrays and dtypes.

    A batch is a dict of bytes keys, lists, ints, bytes and one uint8 array. Anything else
    (os.system, builtins.eval, ...) is refused before it can be called.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 carry bytes
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"global {module}.{name} is not allowed")


# A real batch memoizes a few tens of thousands of objects. A pickle can name any memo slot,
# and CPython grows its memo table to that index before anything else is checked: one
# 6-byte opcode could claim gigabytes (found by fuzzing). Larger indices are refused.
MAX_MEMO_INDEX = 1_000_000
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def _check_memo(blob: bytes, what: str) -> None:
    try:
        for op, arg, _ in pickletools.genops(blob):
            if op.name in _MEMO_OPS and int(arg) > MAX_MEMO_INDEX:
                raise CifarlabError(f"{what} is not a valid CIFAR-10 batch (memo index {arg} is "
                                    "far beyond any real batch); replace it with a copy of the "
                                    "official release")
    except CifarlabError:
        raise
    except Exception:  # opcodes that do not parse: the unpickler itself reports those
        return


def restricted_loads(blob: bytes, what: str):
    """Unpickle a CIFAR batch without letting it run code; `what` names it in errors."""
    _check_memo(blob, what)
    try:
        return _RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except _Refused as e:
        raise CifarlabError(f"{what} is not a valid CIFAR-10 batch ({e}); "
                            "replace it with a copy of the official release") from None
    except Exception as e:  # truncated or garbled pickles raise all sorts of things
        raise CifarlabError(f"{what} is truncated or corrupt ({type(e).__name__}); "
                            "replace it with a copy of the official release") from None
