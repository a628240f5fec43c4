"""A run folder, and the one object that reads and writes its files.

    run/config.yaml      resolved configuration        run/samples.sqlite    the sample store
    run/models/*.pt      chain models (portable)       run/block_order.json  depth ranking
    run/predictor.json   fitted MAP + LOO record       run/plan.json         chosen point
    run/plans.json       plan for several budgets      run/final/            final fine-tune
    run/final.json       final figures                 run/report/           report + plots

One process works in a folder at a time: :meth:`Run.lock` is taken before anything is
written, so a refused second process changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from ..errors import DwrpruneError
from ..io.files import atomic_write_bytes, check_folder_writable, read_json, read_yaml, save_json
from ..io.settings import CHAIN_KEYS, check_same_settings, extends
from ..io.store import SampleStore
from ..search.predictor import Predictor
from ..search.solver import Solution
from ..training.device_data import DATA_PATH
from .config import PipelineConfig, given


def _lasting_path(path: str | None) -> str | None:
    """A path as a run folder keeps it: absolute where it names an existing file or folder
    (so a stage run from another directory reads the same one), else as given (a bundled
    checkpoint's name, ``<in-memory>``)."""
    if path is None:
        return None
    p = Path(str(path))
    return str(p.resolve()) if p.exists() else str(path)


class Run:
    """A run folder: its resolved config, source checkpoint, and the stage outputs."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.fingerprint: str | None = None  # of the original model, from config.yaml

    def check_model(self, fingerprint: str | None) -> None:
        """The model a stage is given is the one the folder's samples came from (its
        weights and spec, fingerprinted when the folder was started), or one clear error."""
        if fingerprint and self.fingerprint and fingerprint != self.fingerprint:
            raise DwrpruneError(f"run {self.path} was started from a different model (its weights "
                                "or architecture differ from the ones given now); give the "
                                "same checkpoint, or use a new --out folder")

    # ------------------------------------------------------------------ the folder itself
    def check_writable(self) -> None:
        """The folder can be created and written: else one clear error naming it, before
        any work (not a traceback half-way through)."""
        check_folder_writable(self.path, "run folder")

    def mkdir(self) -> None:
        self.check_writable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DwrpruneError(f"cannot create run folder {self.path}: {e.strerror}") from None

    @contextmanager
    def lock(self, wait: bool = False, on_wait=None) -> Iterator[None]:
        """One working process per run folder (the sample store's advisory lock)."""
        self.mkdir()
        with SampleStore.folder_lock(self.path / "samples.sqlite", wait, on_wait,
                                     reentrant=True):
            yield

    # ------------------------------------------------------------------ config
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def adopt_extensions(self, cfg: PipelineConfig) -> PipelineConfig:
        """``cfg`` with the chains this folder's collection was extended along (a latency
        budget beyond the sampled box extends a chain; the same command run again keeps
        the extension)."""
        if not self.config_path.exists():
            return cfg
        old, _ = self.load_config()
        longer = {k: getattr(old, k) for k in CHAIN_KEYS
                  if extends(getattr(old, k), getattr(cfg, k))}
        return cfg.replace(**longer) if longer else cfg

    def save_config(self, cfg: PipelineConfig, checkpoint: str,
                    fingerprint: str | None = None) -> None:
        """Write the resolved config; a changed *collection* config, or another model than
        the one the folder was started with, is refused up front (before any write)."""
        if self.config_path.exists():
            old, _ = self.load_config()
            check_same_settings(old.collect_config(), cfg.collect_config(),
                                f"run {self.path}", "collected",
                                PipelineConfig.collect_defaults())
            self.check_model(fingerprint)
        self.mkdir()
        body = {"checkpoint": _lasting_path(checkpoint),
                "model_fingerprint": fingerprint or self.fingerprint,
                **cfg.replace(data_dir=_lasting_path(cfg.data_dir)).as_dict()}
        text = yaml.safe_dump(body, sort_keys=False)
        atomic_write_bytes(self.config_path, lambda f: f.write(text.encode()))

    def load_config(self, **overrides) -> tuple[PipelineConfig, str]:
        if not self.config_path.exists():
            raise DwrpruneError(f"{self.path} is not a dwrprune run folder (no config.yaml); "
                                "start one with `dwrprune prune` or `dwrprune collect`")
        body = read_yaml(self.config_path, "run config")
        if not isinstance(body, dict) or not isinstance(body.get("checkpoint"), str):
            raise DwrpruneError(f"{self.config_path} is not a run config (a mapping with a "
                                "'checkpoint' path and the pipeline options); it may be empty "
                                "or truncated: start a new --out folder")
        checkpoint = body.pop("checkpoint")
        self.fingerprint = body.pop("model_fingerprint", None)
        if not isinstance(self.fingerprint, (str, type(None))):
            raise DwrpruneError(f"{self.config_path}: model_fingerprint must be text; the "
                                "file is damaged: start a new --out folder")
        if checkpoint != "<in-memory>" and not Path(checkpoint).is_absolute() and \
                (self.path / checkpoint).exists():
            checkpoint = str(self.path / checkpoint)  # relative to the run folder
        body.update(given(overrides))
        return PipelineConfig.from_dict(body, f"options in {self.config_path}"), checkpoint

    # ------------------------------------------------------------------ stage files
    # Each stage file, what it is, the stage that writes it, and the type it must hold.
    _FILES = {"predictor.json": ("fitted predictor", "fit", dict),
              "block_order.json": ("block ranking", "collect", dict),
              "plan.json": ("plan", "plan", dict),
              "final.json": ("final figures", "finetune", dict),
              "latency": ("latency model", "plan", dict)}

    def _json(self, name: str, parse=None):
        """A stage file read and parsed (``parse(body)``), or one error naming the file,
        what is wrong with it and the stage to re-run."""
        what, stage, kind = self._FILES[name.split("/")[0]]
        p = self.path / name
        fix = f"run the {stage} stage (dwrprune {stage} --run {self.path}) to write it again"
        if not p.exists():
            raise DwrpruneError(f"{self.path} has no {what} ({name}); run the {stage} stage "
                                "first")
        body = read_json(p, what, fix)
        try:
            if not isinstance(body, kind):
                raise TypeError(f"a {type(body).__name__}, not a {kind.__name__}")
            return parse(body) if parse is not None else body
        except DwrpruneError as e:
            raise DwrpruneError(f"{p} is not a valid {what}: {e}; {fix}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise DwrpruneError(f"{p} is not a valid {what} ({type(e).__name__}: "
                                f"{str(e)[:80]}); {fix}") from None

    def store(self) -> SampleStore:
        p = self.path / "samples.sqlite"
        if not p.exists():
            raise DwrpruneError(f"{self.path} has no samples yet; run the collect stage first")
        return SampleStore(p)

    def predictor(self) -> tuple[Predictor, dict]:
        return self._json("predictor.json", lambda b: (Predictor.from_dict(b["predictor"]),
                                                       dict(b.get("holdout", {}))))

    def save_predictor(self, pred: Predictor, holdout: dict) -> None:
        """The fit, with the samples it saw (so a later report can tell it is out of date)."""
        keys = sorted(s.key for s in self.store().samples())
        save_json(self.path / "predictor.json", {"predictor": pred.to_dict(),
                                                 "holdout": holdout, "samples": keys})

    def _digest(self, name: str) -> str | None:
        p = self.path / name
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.exists() else None

    def out_of_date(self) -> list[str]:
        """Each stage file made from another version of the stage before it: the predictor
        from fewer samples than the store holds, the plan from another fit, the final model
        for another point than the plan's."""
        stale = []
        if (self.path / "predictor.json").exists() and (self.path / "samples.sqlite").exists():
            fitted = read_json(self.path / "predictor.json", "fitted predictor",
                               "run the fit stage").get("samples")
            now = {s.key for s in self.store().samples()}
            if isinstance(fitted, list) and set(fitted) != now:
                stale.append(f"the predictor was fitted on {len(fitted)} samples; the store "
                             f"now holds {len(now)} (run the fit, plan and finetune stages "
                             "again)")
        plan = self.plan() if (self.path / "plan.json").exists() else None
        if plan is not None and plan.get("predictor") not in (None,
                                                              self._digest("predictor.json")):
            stale.append("the plan was made from an earlier fit of the predictor (run the "
                         "plan stage again)")
        if plan is not None and (self.path / "final.json").exists():
            b, f = plan["solution"]["best"], self.final()["point"]
            if any(abs(b[k] - f[k]) > 1e-9 for k in "dwr") or \
                    b.get("round_to") != f.get("round_to"):
                def at(x):
                    return (f"d={x['d']:.3f} w={x['w']:.3f} r={x['r']:.3f}"
                            + (f" round_to={x['round_to']}" if x.get("round_to") else ""))
                stale.append(f"the final model was made for {at(f)}, the plan now chooses "
                             f"{at(b)} (run the finetune stage again)")
        return stale

    def block_ranking(self) -> tuple[list[str] | None, str | None]:
        """The depth ranking saved at collection time, and the criterion that made it."""
        p = self.path / "block_order.json"
        if not p.exists():
            return None, None
        def parse(b):
            if not isinstance(b["order"], list) or not all(isinstance(n, str) for n in
                                                            b["order"]):
                raise TypeError("order must be a list of block names")
            return b["order"], b.get("criterion")

        return self._json("block_order.json", parse)

    def save_block_ranking(self, order: list[str], criterion: str, scores: dict) -> None:
        save_json(self.path / "block_order.json", {"criterion": criterion, "order": order,
                                                   "scores": scores})

    def plan(self) -> dict:
        return self._json("plan.json")

    def solution(self) -> Solution:
        return self._json("plan.json", lambda b: Solution.from_dict(b["solution"]))

    def save_plan(self, budget: float, solution: Solution, grid: dict,
                  latency: dict | None = None) -> Path | None:
        """The chosen point the final stage prunes to (the only writer of plan.json).  A
        final model made for another point is moved aside (returned), never left beside a
        plan it does not belong to."""
        save_json(self.path / "plan.json", {"budget": budget, "solution": solution.to_dict(),
                                            "grid": grid, "latency": latency,
                                            "predictor": self._digest("predictor.json")})
        return self.retire_final(solution.best.key())

    def retire_final(self, point: list[float]) -> Path | None:
        """Move ``final/``, ``final.json`` and ``report/`` to ``superseded-N/`` when they were
        made for another point than ``point``; returns where they went."""
        settings = self.final_dir / "settings.json"
        if not settings.exists():
            return None
        old = read_json(settings, "final-stage settings", "re-run the finetune stage")
        if isinstance(old, dict) and old.get("point") == list(point):
            return None
        n = 1
        while (self.path / f"superseded-{n}").exists():
            n += 1
        dest = self.path / f"superseded-{n}"
        dest.mkdir()
        for name in ("final", "final.json", "report"):
            if (self.path / name).exists():
                shutil.move(str(self.path / name), str(dest / name))
        return dest

    def save_plans(self, rows: list[dict]) -> None:
        save_json(self.path / "plans.json", rows)

    # ------------------------------------------------------------------ latency models
    def latency_model_path(self, target) -> Path:
        return self.path / "latency" / f"{target.key()}.json"

    def latency_model(self, target):
        """The cached latency model for ``target`` (a LatencyTarget), or None."""
        from ..cost.latency import LatencyModel

        p = self.latency_model_path(target)
        if not p.exists():
            return None
        m = self._json(f"latency/{p.name}", LatencyModel.from_dict)
        m.check_target(target)
        return m

    def save_latency_model(self, model) -> None:
        save_json(self.latency_model_path(model.target), model.to_dict())

    # ------------------------------------------------------------------ final stage
    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    def final_settings(self, cfg: PipelineConfig, solution: Solution) -> dict:
        """What the final model depends on: the chosen point and the final-stage options."""
        return {"point": solution.best.key(), **cfg.final_config(),
                "recal_batches": cfg.recal_batches, "seed": cfg.seed,
                "precision": cfg.precision, "channels_last": cfg.channels_last,
                "data_path": DATA_PATH}

    def prepare_final(self, settings: dict) -> str | None:
        """Bind ``final/`` to ``settings``.  Work made with other settings (another budget
        or recipe) is removed, with the final figures and report, so the folder never holds
        a plan for one point and a model for another.  Returns what was discarded."""
        path = self.final_dir / "settings.json"
        old = (read_json(path, "final-stage settings", "re-run the finetune stage")
               if path.exists() else None)
        if old is not None and not isinstance(old, dict):
            old = {"settings": "unreadable"}  # damaged: the final stage starts afresh
        stale = None
        if old is not None and old != settings:
            stale = ", ".join(k for k in sorted(set(old) | set(settings))
                              if old.get(k) != settings.get(k))
        elif old is None and (self.final_dir.exists() or (self.path / "final.json").exists()):
            stale = "unrecorded settings"
        if stale:
            shutil.rmtree(self.final_dir, ignore_errors=True)
            (self.path / "final.json").unlink(missing_ok=True)
            shutil.rmtree(self.path / "report", ignore_errors=True)
        save_json(path, settings)
        return stale

    def final(self) -> dict:
        return self._json("final.json")

    def save_final(self, result: dict) -> None:
        save_json(self.path / "final.json", result)

