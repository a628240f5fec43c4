"""The comprehensive pruning pipeline (Wang et al., ICML 2021), one module per stage.

    config     one typed configuration, validated before any work (+ validate)
    data       where images come from, and the checks made on them
    shrinker   the one place a config becomes a Shrinker
    jobs       the job list of a collection and the sample each job computes
    executors  local and Ray job graphs (run_graph)
    collect    stage 1: samples into the run's store, resumably
    fit        stage 2: the accuracy predictor (MAP)
    points     realisable one-axis points under a budget
    solve      stage 3: the best realisable (d, w, r) per budget
    finetune   stage 4: prune to the chosen point, fine-tune, test once
    report     stage 5: the run's report (JSON, Markdown, plots)
    run        the run folder and every file in it
    api        prune() in one call, and the checked entry points the CLI shares

Samples and choices use the validation split; the test set is touched once, at the end.
"""

from .api import PruneResult, attach_spec, final_stage, open_run, prune, start_run
from .collect import Collector, collect
from .config import PRESETS, PipelineConfig, read_options_file, resolve_config
from .data import (
    DatasetSource,
    DataSource,
    FinetuneFn,
    TorchDataSource,
    check_data_matches,
    check_validation_split,
    default_finetune,
)
from .finetune import finetune_final
from .fit import fit_run, fit_samples
from .jobs import Job, SampleJobs, model_fingerprint, plan_jobs
from .points import largest_under, one_axis_point
from .run import Run
from .shrinker import build_shrinker, run_shrinker
from .solve import exact_cost_grid, plan_run, solve_budget

__all__ = [
    "PRESETS", "Collector", "DataSource", "DatasetSource", "FinetuneFn", "Job",
    "PipelineConfig", "PruneResult", "Run", "SampleJobs", "TorchDataSource", "attach_spec",
    "build_shrinker",
    "check_data_matches", "check_validation_split", "collect", "default_finetune",
    "exact_cost_grid", "final_stage", "finetune_final", "fit_run", "fit_samples",
    "largest_under", "model_fingerprint",
    "one_axis_point", "open_run", "plan_jobs",
    "plan_run", "prune", "read_options_file", "resolve_config", "run_shrinker",
    "solve_budget", "start_run",
]
