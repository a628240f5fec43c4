import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

import dwrprune
from dwrprune import DwrpruneError
from dwrprune.cli import main
from dwrprune.io.store import SampleStore
from dwrprune.pipeline import PipelineConfig, resolve_config
from dwrprune.training.data import FASHION_MNIST_DIR


@pytest.mark.slow
def test_prune_end_to_end_and_stage_commands(tmp_path, tiny_checkpoint, capsys, config_file):
    run = tmp_path / "run"
    assert main(["prune", "--checkpoint", str(tiny_checkpoint), "--config", config_file(),
                 "--out", str(run), "--no-progress"]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["macs"] <= 0.5 * final["original_macs"]
    model = dwrprune.load(run / "final" / "model.pt")  # the figure is the saved model's
    test = dwrprune.DatasetSource("synthetic", batch_size=64).loader(
        "test", final["point"]["resolution"])
    assert final["test_acc"] == pytest.approx(dwrprune.evaluate(model, test).accuracy)
    for f in ("report/report.md", "report/axes.png", "report/slice.png",
              "report/acc_vs_macs.png", "final/model.pt", "predictor.json", "plan.json"):
        assert (run / f).exists(), f
    md = (run / "report/report.md").read_text()
    assert "## Predictor" in md and "held-out" in md
    # the answer first: result, how to feed it, speed-ups, channels, removed blocks
    heads = [h for h in md.splitlines() if h.startswith("## ")]
    assert heads[:5] == ["## Result", "## Deploy it", "## Speed-ups", "## Channels per layer",
                         "## Removed blocks"], heads
    assert final["contract"] in md and "Out of date" not in md
    from dwrprune.training.engine import compute_device, resolve_precision

    here = resolve_precision("auto", compute_device())  # the default, as recorded
    assert (f"Trained in {here}, NCHW layout, data path 2 (batches made on the compute device)"
            in md)
    rows = {c["layer"]: c for c in final["channels"]}
    assert rows["fc"]["after"] == rows["fc"]["before"]  # the classes stay
    assert all(c["after"] is None or c["after"] <= c["before"] for c in rows.values())
    gone = {k for k, c in rows.items() if c["after"] is None}
    assert gone == {k for k in rows if k.rsplit(".", 1)[0] in final["removed_blocks"]}
    for b in final["removed_blocks"]:
        assert f"| {b} | " in md  # each removed block with its score
    # one log line per stage
    log = capsys.readouterr().out
    for tag in ("[collect] ", "[fit] predictor", "[plan] chose", "[final] pruning to",
                "[test] test accuracy"):
        assert tag in log, tag
    from dwrprune.cost.rounding import misaligned

    odd = misaligned([(c["before"], c["after"]) for c in final["channels"]])
    assert ("[note] " in log) == ("off a multiple of 8" in md) == bool(odd)
    assert "fine-tunes" in log.split("[collect] ", 1)[1].splitlines()[0]
    assert "[collect] estimated" in log
    store = SampleStore(run / "samples.sqlite")
    kinds = {s.kind for s in store.samples()}
    assert kinds == {"original", "chain", "mixed", "holdout"}
    capsys.readouterr()
    # the plan stage answers many budgets from the stored collection
    assert main(["plan", "--run", str(run), "--budgets", "0.3,0.5,0.8"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = [x for x in out[1:] if not x.startswith(" " * 8)]  # budget rows, not their "why"
    assert [x.split()[0] for x in rows] == ["0.300", "0.500", "0.800"]
    # each says how it compares with one axis
    assert sum(("over" in x) or ("itself" in x) for x in out) == 3
    assert main(["fit", "--run", str(run), "--families", "separable"]) == 0
    assert main(["report", "--run", str(run)]) == 0
    # a re-fit leaves the plan (and the final model) behind it: the report says so
    md = (run / "report/report.md").read_text()
    assert "**Out of date:** the plan was made from an earlier fit" in md


@pytest.mark.slow
def test_resuming_with_other_config_is_refused(tmp_path, tiny_checkpoint, capsys, config_file):
    run = tmp_path / "run"
    assert main(["collect", "--checkpoint", str(tiny_checkpoint), "--config",
                 config_file(), "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["collect", "--checkpoint", str(tiny_checkpoint), "--config",
                 config_file(), "--out", str(run), "--finetune-steps", "4",
                 "--no-progress"]) == 2
    assert ("with different settings (differs in: finetune_steps (was 3, now 4))"
            in capsys.readouterr().err)
    assert yaml.safe_load((run / "config.yaml").read_text())["finetune_steps"] == 3
    other = tmp_path / "other"
    assert main(["train", "--model", "resnet_tiny2", "--data", "synthetic", "--steps", "2",
                 "--out", str(other), "--no-progress"]) == 0
    assert main(["collect", "--checkpoint", str(other / "model.pt"), "--config",
                 config_file(), "--out", str(run), "--no-progress"]) == 2
    assert "different model" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_collection_resumes_without_loss(tmp_path, tiny_checkpoint, config_file):
    run = tmp_path / "run"
    cfg = config_file(finetune_steps=40)
    cmd = [sys.executable, "-m", "dwrprune", "collect", "--checkpoint", str(tiny_checkpoint),
           "--config", cfg, "--out", str(run), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = run / "samples.sqlite"
    deadline = time.time() + 120
    finished = []
    while time.time() < deadline:
        if db.exists():
            try:
                finished = sqlite3.connect(db).execute(
                    "SELECT key, created FROM samples").fetchall()
            except sqlite3.OperationalError:
                finished = []
            if len(finished) >= 3:
                break
        time.sleep(0.05)
    assert len(finished) >= 3, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = dict(sqlite3.connect(db).execute("SELECT key, created FROM samples").fetchall())
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    after = dict(sqlite3.connect(db).execute("SELECT key, created FROM samples").fetchall())
    assert len(after) == 11  # orig + 2 d + 2 w + 2 r + 2 mixed + 2 holdout
    for k, created in before.items():  # finished samples were not recomputed
        assert after[k] == created


@pytest.mark.parametrize("values,match", [
    ({"budget": 1.5}, "budget must be in"),
    ({"depth_steps": [0.5, 0.7]}, "must decrease"),
    ({"mixed_points": [[0.5, 0.5]]}, r"\[d, w, r\]"),
    ({"colour": 1}, "unknown pipeline options"),
])
def test_bad_configs(values, match):
    with pytest.raises(DwrpruneError, match=match):
        PipelineConfig.from_dict(values)


def test_presets_and_unknown_preset():
    assert resolve_config("quick").finetune_steps == 30
    assert resolve_config("quick", finetune_steps=5).finetune_steps == 5
    with pytest.raises(DwrpruneError, match="unknown preset"):
        resolve_config("slow")


def test_data_source_without_validation_split(tiny_checkpoint, tmp_path, tiny_options):
    from dwrprune import load
    from dwrprune.pipeline import DatasetSource, collect

    class NoVal(DatasetSource):
        def loader(self, split, resolution, **kw):
            if split == "val":
                raise KeyError("val")
            return super().loader(split, resolution, **kw)

    with pytest.raises(DwrpruneError, match="no validation split"):
        collect(load(tiny_checkpoint), NoVal("synthetic"), PipelineConfig.from_dict(tiny_options),
                tmp_path / "r", progress=False)


def test_stage_before_collect_is_clear(tmp_path, capsys):
    assert main(["plan", "--run", str(tmp_path)]) == 2
    assert "not a dwrprune run folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(),
                    reason="needs dataset-fashion-mnist")
def test_quick_preset_on_bundled_model(tmp_path):
    """The README's main job, trimmed: real model, real data, the whole pipeline."""
    run = tmp_path / "quick"
    assert main(["prune", "--preset", "quick", "--out", str(run), "--no-progress",
                 "--finetune-steps", "8", "--mixed-finetune-steps", "8",
                 "--holdout-points", "0.57,0.75,0.86", "--final-subset", "1000",
                 "--train-subset", "1000", "--val-subset", "500"]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["macs"] <= 0.5 * final["original_macs"]
    assert final["original_test_acc"] >= 0.93
    assert final["test_acc"] > 0.5  # pruned and briefly fine-tuned, far above chance
    assert (run / "report" / "slice.png").exists()


@pytest.mark.slow
def test_python_api_with_own_finetune_function(tmp_path, tiny_checkpoint, tiny_options):
    import dwrprune

    calls = []

    def my_finetune(model, loader, steps, lr, seed):
        calls.append((steps, loader.dataset[0][0].shape[-1]))
        dwrprune.pipeline.default_finetune(model, loader, steps, lr, seed)

    model = dwrprune.load(tiny_checkpoint)
    cfg = dwrprune.PipelineConfig.from_dict({**tiny_options, "holdout_points": []})
    data = dwrprune.DatasetSource("synthetic", batch_size=32)
    store = dwrprune.collect(model, data, cfg, tmp_path / "api", finetune=my_finetune,
                             progress=False)
    assert len(calls) == len(store.samples()) - 1  # every sample but the original
    assert {res for _, res in calls} == {16, 12, 8}  # chains fine-tune at their resolution
    pred, holdout = dwrprune.fit_samples(store, cfg)
    sol = dwrprune.solve(pred, dwrprune.Shrinker(model), 0.4)
    assert sol.best.macs <= 0.4 * sol.base_macs
    assert holdout["count"] == len(store.samples(kinds=("mixed",)))  # held out by default


@pytest.mark.slow
def test_pipeline_with_autobot_width_allocation(tmp_path, tiny_checkpoint, config_file):
    run = tmp_path / "run"
    assert main(["prune", "--checkpoint", str(tiny_checkpoint), "--config", config_file(),
                 "--out", str(run), "--width-allocation", "autobot", "--autobot-steps", "4",
                 "--no-progress"]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["macs"] <= 0.5 * final["original_macs"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["width_allocation"] == "autobot"


def test_store_from_older_version_without_new_keys_resumes():
    from dwrprune.io.settings import check_same_settings

    new = PipelineConfig().collect_config()
    old = {k: v for k, v in new.items() if k != "width_allocation"}
    defaults = PipelineConfig.collect_defaults()
    check_same_settings(old, new, "run", defaults=defaults)  # default: fine
    with pytest.raises(DwrpruneError, match="differs in: width_allocation"):
        check_same_settings(old, {**new, "width_allocation": "autobot"}, "run",
                            defaults=defaults)


@pytest.mark.slow
def test_missing_chain_model_is_a_clear_error(tmp_path, tiny_checkpoint, capsys, config_file):
    run = tmp_path / "run"
    args = ["collect", "--checkpoint", str(tiny_checkpoint), "--config", config_file(),
            "--out", str(run), "--no-progress"]
    assert main(args) == 0
    db = sqlite3.connect(run / "samples.sqlite")
    db.execute("DELETE FROM samples WHERE key = 'd/1'")
    db.commit()
    (run / "models" / "d_0.pt").unlink()
    capsys.readouterr()
    assert main(args) == 2
    assert "chain model" in capsys.readouterr().err


@pytest.mark.slow
def test_second_collector_on_one_folder_is_refused_or_waits(tmp_path, tiny_checkpoint,
                                                            tiny_options):
    import threading

    from dwrprune import load
    from dwrprune.pipeline import DatasetSource, collect

    cfg = PipelineConfig.from_dict({**tiny_options, "holdout_points": [], "mixed_points": []})
    data = DatasetSource("synthetic", batch_size=32)
    store = SampleStore(tmp_path / "run" / "samples.sqlite")
    with store.exclusive():  # another process, as far as the lock can tell, is collecting
        with pytest.raises(DwrpruneError, match="already working in"):
            collect(load(tiny_checkpoint), data, cfg, tmp_path / "run", progress=False)
    lock = store.exclusive()
    lock.__enter__()
    threading.Timer(1.0, lambda: lock.__exit__(None, None, None)).start()
    t0 = time.time()
    done = collect(load(tiny_checkpoint), data, cfg, tmp_path / "run", progress=False,
                   wait_for_lock=True)
    assert time.time() - t0 >= 1.0 and len(done.samples()) == 7
