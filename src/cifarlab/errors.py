"""The one exception type the command line turns into a clean one-sentence error."""


class CifarlabError(Exception):
    """A problem with the user's input or environment, not a bug.

    The message is a single sentence that names the bad input and what to do about it.
    The command line prints it without a traceback and exits with ``exit_code``.
    """

    exit_code = 2


def out_of_memory(error: BaseException) -> CifarlabError:
    """torch's out-of-memory error, said as what to do about it."""
    first = (str(error).splitlines() or [""])[0].split(". ")[0]
    return CifarlabError(f"the GPU ran out of memory ({first}); use a smaller --batch-size, "
                         "fewer --jobs per GPU, or with Ray a larger --gpus-per-task")


def is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError (torch.cuda.OutOfMemoryError), known without importing torch."""
    return any(t.__name__ == "OutOfMemoryError" for t in type(error).__mro__)
