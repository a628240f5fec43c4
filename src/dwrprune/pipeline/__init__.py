"""The comprehensive pruning pipeline (Wang et al., ICML 2021), one module per stage.

    config     one typed configuration, validated before any work (+ validate)
    data       where images come from, and the checks made on them
    shrinker   the one place a config becomes a Shrinker
    jobs       the job list of a collection and the sample each job computes
    executors  local and Ray job graphs (run_graph)
    collection stage 1: samples into the run's store, resumably
    fit        stage 2: the accuracy predictor (MAP)
    points     realisable one-axis points under a budget
    solve      stage 3: the best realisable (d, w, r) per budget
    finetune   stage 4: prune to the chosen point, fine-tune, test once
    report     stage 5: the run's report (JSON, Markdown, plots)
    run        the run folder and every file in it
    api        prune() in one call, and the checked entry points the CLI shares

Samples and choices use the validation split; the test set is touched once, at the end.
"""

import importlib

# name -> module of this package; imported on first use (PEP 562), so that the command line
# reads the options file and answers --help without importing torch.
_API = {
    "PruneResult": "api",
    "attach_spec": "api",
    "final_stage": "api",
    "open_run": "api",
    "prune": "api",
    "start_run": "api",
    "Collector": "collection",
    "collect": "collection",
    "PRESETS": "config",
    "PipelineConfig": "config",
    "read_options_file": "config",
    "resolve_config": "config",
    "DatasetSource": "data",
    "DataSource": "data",
    "FinetuneFn": "data",
    "TorchDataSource": "data",
    "check_data_matches": "data",
    "check_validation_split": "data",
    "default_finetune": "data",
    "finetune_final": "finetune",
    "fit_run": "fit",
    "fit_samples": "fit",
    "Job": "jobs",
    "SampleJobs": "jobs",
    "model_fingerprint": "jobs",
    "plan_jobs": "jobs",
    "largest_under": "points",
    "one_axis_point": "points",
    "Run": "run",
    "build_shrinker": "shrinker",
    "run_shrinker": "shrinker",
    "exact_cost_grid": "solve",
    "plan_run": "solve",
    "solve_budget": "solve",
}


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


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
