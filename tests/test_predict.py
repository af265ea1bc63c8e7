import json
import shutil

import numpy as np
import pytest
from conftest import Tiny
from PIL import Image

from cifarlab import RunConfig, train_run
from cifarlab.cli import main
from cifarlab.errors import CifarlabError
from cifarlab.predict import predict, to_cifar


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    tiny = Tiny(per_class_train=40, per_class_test=10)
    data = tiny.write_binary(root / "data")
    cfg = RunConfig(blocks=2, filters=(8, 16), dense=(32,), epochs=3, val_split=60,
                    device="cpu", data=str(data))
    result = train_run(cfg, root / "run", verbose=False)
    shutil.rmtree(root / "data")  # predicting must not need the training data
    return root / "run", tiny, result


def test_pictures_of_any_size_mode_and_format_are_classified(run, tmp_path):
    run_dir, _, _ = run
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(
        tmp_path / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8), "L").save(
        tmp_path / "grey.jpg")
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(
        tmp_path / "photo.jpg", quality=90)
    results = predict(run_dir, [tmp_path], top_k=3)
    assert [r.file.rsplit("/", 1)[1] for r in results] == ["alpha.png", "grey.jpg", "photo.jpg"]
    for r in results:
        probs = [p for _, p in r.top]
        assert len(r.top) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001


def test_transparency_is_composited_on_white_and_exif_orientation_applied(tmp_path):
    clear = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    clear.save(tmp_path / "clear.png")
    assert (to_cifar(tmp_path / "clear.png") == 255).all()
    tall = np.zeros((64, 32, 3), np.uint8)
    tall[:32] = 255  # white top half
    im = Image.fromarray(tall)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = to_cifar(tmp_path / "rotated.jpg").mean(axis=(0, 2))
    assert upright[24:].mean() > 200 and upright[:8].mean() < 50  # white is on the right now


def test_predictions_match_the_test_evaluation_on_cifar_sized_images(run, tmp_path):
    run_dir, tiny, result = run
    for i in range(20):
        Image.fromarray(tiny.test_x[i]).save(tmp_path / f"{i:02d}.png")
    results = predict(run_dir, [tmp_path], top_k=1)
    expected = result.evaluation.predictions[:20]
    classes = json.loads((run_dir / "config.json").read_text())["classes"]
    assert [r.top[0][0] for r in results] == [classes[i] for i in expected]


def test_cli_prints_text_or_json_and_skips_unreadable_files(run, tmp_path, capsys):
    run_dir, tiny, _ = run
    Image.fromarray(tiny.test_x[0]).save(tmp_path / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(["predict", str(run_dir), str(tmp_path), "--top-k", "2", "--json"]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert len(doc) == 1 and doc[0]["file"].endswith("a.png")
    assert [set(p) for p in doc[0]["predictions"]] == [{"class", "probability"}] * 2
    assert "skipped" in out.err and "broken.jpg cannot be read as an image" in out.err
    assert main(["predict", str(run_dir), str(tmp_path / "a.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "a.png")) and line.count("%") == 3


def test_predict_errors(run, tmp_path, capsys):
    run_dir, _, _ = run
    assert main(["predict", str(run_dir), str(tmp_path / "nope.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(run_dir), str(tmp_path)]) == 2
    assert "no image files found" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), str(tmp_path)]) == 2
    assert "is not a cifarlab run folder" in capsys.readouterr().err
    with pytest.raises(CifarlabError, match="--top-k must be at least 1"):
        predict(run_dir, [tmp_path], top_k=0)
