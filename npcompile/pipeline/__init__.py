"""Passes and the pipeline that runs them (:mod:`.core`), pipeline files (:mod:`.file`) and plugins
(:mod:`.plugins`). The names here are the public API for writing passes."""

from npcompile.pipeline.core import Context, Pass, PassResult, Pipeline, available_passes, get_pass, register_pass
from npcompile.pipeline.options import PassOptions, option

__all__ = ["Context", "Pass", "PassResult", "Pipeline", "register_pass", "get_pass", "available_passes",
           "PassOptions", "option"]
