import re
import shutil
import subprocess

import pytest
from conftest import Tiny

from cifarlab import runner
from cifarlab.cli import main
from cifarlab.study import Scale, apply_scale, parse

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000"]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    data = Tiny(per_class_train=40, per_class_test=10).write_binary(root / "data")
    s = parse({"name": "report-test", "seeds": 2,
               "defaults": {"data": str(data), "blocks": 2, "filters": [8, 16], "dense": [32],
                            "epochs": 3, "val_split": 60, "device": "cpu", "lr": 2e-4},
               "variant": [{"name": "base"},
                           {"name": "frac", "grid": {"fraction": [0.25, 0.5]}}]}, "inline")
    s = apply_scale(s, Scale(max_epochs=2))
    runner.run_study(s, root / "out", verbose=False)
    assert main(["report", str(root / "out")]) == 0
    return root / "out"


def test_html_report_is_self_contained_with_every_section(study_dir):
    page = (study_dir / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(href|src)="(https?:)?//', page)  # nothing fetched from a network
    for heading in ("What this study says", "Settings", "Results", "Learning curves",
                    "Accuracy against the swept settings", "Confusion matrices and per-class F1",
                    "Most confused class pairs",
                    "Misclassified test images of the best variant"):
        assert f"<h2>{heading}" in page, heading
    assert "SCALED DOWN: at most 2 epochs" in page
    rows = re.findall(r"<tr><td>([^<]*)</td>", page)
    assert rows == ["base", "frac fraction=0.25", "frac fraction=0.5"] * 2  # both tables
    # The sweep's variants show the images they really trained on, not the bare fraction.
    assert "<td>85 images, 2 epochs</td>" in page and "<td>340 images, 2 epochs</td>" in page
    assert page.count('class="tile"') > 0  # the gallery of mistakes has images


def test_markdown_report_links_pngs_that_exist(study_dir):
    md = (study_dir / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+)\)", md)
    assert len(links) >= 5  # curves, the fraction sweep, three confusion figures
    assert all((study_dir / link).read_bytes()[:4] == b"\x89PNG" for link in links)
    assert "| base | 340 images, 2 epochs | 2 |" in md


def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("headless Chromium is missing: scripts/setup.sh installs Debian's "
                    "chromium package (as root)")
    return found


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and re.search(r"Uncaught|Error", line)]


def render(page, tmp_path, name):
    profile = tmp_path / f"profile-{name}"
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                          "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    return dom.stdout, dom.stderr


def test_headless_browser_renders_the_report_without_console_errors(study_dir, tmp_path):
    page = study_dir / "report.html"
    dom, stderr = render(page, tmp_path, "report")
    assert console_errors(stderr) == [], stderr
    images = len(re.findall(r"<img ", dom))
    assert images >= 6 and f'data-ready="{images}"' in dom  # the page's script ran to the end
    assert len(re.findall(r"<tr><td>", dom)) == 6
    shot = study_dir / "report-screenshot.png"
    subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'shot'}",
                    "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000


def test_the_console_error_check_catches_a_broken_page(study_dir, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text((study_dir / "report.html").read_text().replace(
        "<script>", "<script>noSuchFunction();", 1))
    dom, stderr = render(broken, tmp_path, "broken")
    assert console_errors(stderr), "a page that throws must be detected"
    assert "data-ready" not in dom


NOTEBOOK = """
import sys
import matplotlib
matplotlib.use("svg")  # the user's choice, as a notebook sets its inline backend
import matplotlib.pyplot as plt
import numpy as np
mine = plt.figure()
from cifarlab import figures
from cifarlab.cli import main
history = [{"epoch": e, "loss": 1 / e, "accuracy": e / 4, "val_loss": 1.2 / e,
            "val_accuracy": e / 5} for e in (1, 2, 3)]
figures.save(figures.run_curves(history, best_epoch=2), sys.argv[1] + "/curves.png")
figures.save(figures.run_confusion(np.eye(3) * 5, ["a", "b", "c"]), sys.argv[1] + "/cm.png")
assert main(["report", sys.argv[2]]) == 0
print(matplotlib.get_backend(), plt.get_fignums() == [mine.number])
"""


def test_drawing_leaves_the_users_backend_and_pyplot_figures_alone(study_dir, tmp_path):
    import sys
    study = tmp_path / "study"
    shutil.copytree(study_dir, study)
    (study / "report.html").unlink()
    done = subprocess.run([sys.executable, "-c", NOTEBOOK, str(tmp_path), str(study)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["svg", "True"]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (study / "report.html").is_file()


def test_an_epoch_count_interval_ends_at_the_runs_epoch_cap(tmp_path):
    # Three seeds that stopped after 5, 10 and 10 of at most 10 epochs: the t interval of
    # the mean reaches past 10, which no run could train; it is cut there and marked.
    from pathlib import Path

    from cifarlab.results import Group, Run
    runs = [Run(Path("r"), seed, {"settings": {"epochs": 10}},
                {"planned_epochs": 10, "test_accuracy": 0.5, "weights_epoch": n},
                [{"epoch": e, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0,
                  "val_accuracy": 0.5} for e in range(1, n + 1)])
            for seed, n in enumerate((5, 10, 10))]
    s = Group("v", runs).summary("epochs_run")
    assert s.mean == pytest.approx(25 / 3) and s.ci_high == 10.0 and s.ci_low >= 1.0
    assert "*" in s.text(1)


def test_study_curves_mark_each_variants_own_half_size_epochs_and_shade_nothing():
    # Variant "early" validated epochs 1-2 on 16x16 images (one seed only epoch 1), "late"
    # none: its line stays solid throughout, and no span covers the figure for both.
    import math
    from pathlib import Path

    from cifarlab.figures import study_curves
    from cifarlab.results import Group, Results, Run

    def run(seed, sizes):
        return Run(Path("r"), seed, {"settings": {"epochs": 4}}, {"test_accuracy": 0.5},
                   [{"epoch": e, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0 / e,
                     "val_accuracy": 0.2 * e, "image_size": size}
                    for e, size in enumerate(sizes, 1)])
    results = Results("t", [Group("early", [run(0, (16, 16, 32, 32)), run(1, (16, 32, 32, 32))]),
                            Group("late", [run(0, (32, 32, 32, 32))])], "early", {})
    axes = study_curves(results).axes
    for ax in axes:
        assert not ax.patches
        early_dotted, early, late = ax.get_lines()[:3]
        assert early_dotted.get_linestyle() == ":"
        assert list(early_dotted.get_xdata()) == [1, 2, 3, 4]
        assert [math.isnan(y) for y in early.get_ydata()] == [True, True, False, False]
        assert late.get_linestyle() == "-" and not any(math.isnan(y) for y in late.get_ydata())
    legend = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert legend == ["early", "late", "dotted: validated on 16x16 images"]


def test_a_budget_study_says_which_width_its_runs_trained():
    # A budget without filters lets each run choose its width (train.width_for_budget): the
    # report names a variant whose runs trained the wider network, and warns when one
    # variant's seeds trained different widths (near the switch, on a machine whose speed
    # drifts), since its spread then mixes two networks. Given filters: nothing to say.
    from pathlib import Path

    from cifarlab.results import Group, Results, Run
    from cifarlab.verdicts import answer

    def run(seed, built, settings):
        chosen = {"filters": list(built), "batch_size": 512, "lr": 0.8} if built == wide else \
            {"filters": list(built), "batch_size": 2000, "lr": 1.66} if built == top else None
        return Run(Path("r"), seed, {"settings": {"model": "fast", "batch_size": 128,
                                                  **settings},
                                     "network": {"filters": list(built)},
                                     "budget_choice": chosen},
                   {"test_accuracy": 0.8},
                   [{"epoch": 1, "loss": 1.0, "accuracy": 0.8, "val_loss": 1.0,
                     "val_accuracy": 0.8}])
    budget = {"budget": "6m", "filters": None}
    narrow, wide, top = (32, 64, 128), (32, 128, 128), (64, 256, 256)
    groups = [Group("short", [run(s, narrow, budget) for s in range(3)]),
              Group("long", [run(s, wide, budget) for s in range(3)]),
              Group("longest", [run(s, top, budget) for s in range(3)]),
              Group("edge", [run(0, wide, budget), run(1, narrow, budget), run(2, wide, budget)]),
              Group("given", [run(s, wide, {"budget": "6m", "filters": list(wide)})
                              for s in range(3)]),
              Group("epochs", [run(s, wide, {"epochs": 8}) for s in range(3)])]
    text = answer(Results("t", groups, "short", {}))
    notes = [t for t in text if "width" in t or "filters" in t]
    assert notes == [
        "long trained 32-128-128 filters in batches of 512 with the wider network's rates, "
        "not its preset's 32-64-128: its budget buys enough steps for the wider network "
        "(give filters to choose the width yourself).",
        "longest trained 64-256-256 filters in batches of 2000 with the GPU recipe's rates, "
        "not its preset's 32-64-128: its budget buys enough steps for the wider network "
        "(give filters to choose the width yourself).",
        "The runs of edge trained different widths (1 of 3 runs 32-64-128, 2 of 3 runs "
        "32-128-128): its budget chose the width run by run from this machine's speed, so "
        "its spread mixes two networks; give it filters to fix the width."]


def test_the_gallery_shows_the_runs_own_mistakes_with_its_test_time_views(tmp_path):
    # A run evaluated with flips (tta=1): the gallery's mistakes are exactly those its
    # confusion matrix counts, not those of an evaluation without the flips.
    from collections import Counter

    import numpy as np

    from cifarlab import RunConfig, train_run
    from cifarlab.evaluate import evaluate
    from cifarlab.loader import Batches, split_dataset
    from cifarlab.report import misclassified_gallery
    from cifarlab.results import Group, read_confusion
    from cifarlab.results import _read_run as read_run
    from cifarlab.run import load_network, test_evaluation
    tiny = Tiny(per_class_train=30, per_class_test=12)
    # test images of noise, which a mirror image changes: the flips move some predictions
    tiny.test_x = np.random.default_rng(0).integers(0, 256, tiny.test_x.shape, dtype=np.uint8)
    data = tiny.write_binary(tmp_path / "data")
    cfg = RunConfig(data=str(data), blocks=1, filters=(8,), dense=(16,), epochs=4,
                    val_split=60, device="cpu", tta=1, lr=3e-3)
    train_run(cfg, tmp_path / "run", verbose=False)
    _, dataset = test_evaluation(tmp_path / "run", progress=False)
    net, _ = load_network(tmp_path / "run", "cpu")
    plain = evaluate(net, Batches(split_dataset(dataset, 0)[2], 500, "cpu",
                                  cfg.normalize), dataset.classes, tta=0)
    matrix, classes = read_confusion(tmp_path / "run" / "confusion_matrix.csv")
    off = {(classes[t], classes[p]): int(matrix[t, p]) for t in range(len(classes))
           for p in range(len(classes)) if t != p and matrix[t, p]}
    without = Counter((classes[t], classes[p]) for t, p in zip(plain.labels, plain.predictions)
                      if t != p)
    assert without != Counter(off)  # the flips matter here, so the test can tell
    mistakes = misclassified_gallery(Group("v", [read_run(tmp_path / "run")]), count=None)
    assert Counter((m["true"], m["predicted"]) for m in mistakes) == Counter(off)


def test_a_run_that_ended_near_chance_is_named_even_when_its_variant_is_not():
    # An early stop in the first flat epochs leaves a run at 0.10: the variant's mean (0.29)
    # hides it, so the report names the run; a variant near chance as a whole is said once.
    from pathlib import Path

    from cifarlab.results import Group, Results, Run
    from cifarlab.verdicts import answer

    def run(seed, acc, kept):
        return Run(Path("r"), seed, {"settings": {"model": "simple"}},
                   {"test_accuracy": acc, "weights_epoch": kept},
                   [{"epoch": 1, "loss": 2.3, "accuracy": 0.1, "val_loss": 2.3,
                     "val_accuracy": 0.1}])
    groups = [Group("base", [run(s, 0.38, 12) for s in range(3)]),
              Group("es", [run(0, 0.10, 1), run(1, 0.39, 12), run(2, 0.37, 9)]),
              Group("lost", [run(s, 0.11, 1) for s in range(3)])]
    text = answer(Results("t", groups, "base", {}))
    assert [t for t in text if "ended near chance" in t] == [
        "es: seed 0 (0.10, kept epoch 1) ended near chance (0.10 is guessing) and counts in "
        "its figures: that run never learnt (early stopping can end a run in its first flat "
        "epochs)."]
    assert sum("lost" in t and "chance" in t for t in text) == 1


def test_a_study_whose_runs_computed_in_two_precisions_says_which_and_how_to_align_them():
    from pathlib import Path

    from cifarlab.results import Group, Results, Run
    from cifarlab.verdicts import answer

    def run(seed, acc, precision):
        return Run(Path("r"), seed, {"settings": {}},
                   {"test_accuracy": acc, "precision": precision}, [])
    one = [Group("simple", [run(s, 0.6, "bfloat16") for s in range(3)]),
           Group("deep", [run(s, 0.58, "float32") for s in range(3)])]
    said = [t for t in answer(Results("t", one, "simple", {})) if "precision" in t]
    assert said == [
        "Its runs computed in 2 precisions, bfloat16 (simple) and float32 (deep): on a CPU "
        "with native bf16 a network trains in bf16 by default only where bf16 was measured "
        "to keep its answers (benchmarks/README.md), and a comparison across precisions "
        "holds to that measurement's margin (a point of accuracy); run it with "
        "`--precision float32` to compare every run in float32."]
    alike = [Group(g.name, [run(s, 0.6, "float32") for s in range(3)]) for g in one]
    assert not [t for t in answer(Results("t", alike, "simple", {})) if "precision" in t]
