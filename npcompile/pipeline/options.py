"""Declared pass options: a pass states each option once, as a field of a frozen dataclass.

```python
@register_pass
class SelectPass(Pass):
    @dataclass(frozen=True)
    class Options(PassOptions):
        ratio: float | None = None
        round_to: int = 1
        include: Any = option(None, record=False)  # not listed in the report

        def __post_init__(self) -> None:  # check (and normalise) the values
            if self.round_to < 1:
                raise OptionError(f"{OPT:round_to} must be >= 1, got {self.round_to}")
```

An error about an option names it by placeholder (:data:`~npcompile.errors.OPT`), so that the
Python user reads ``round_to``, the CLI user ``--round-to``.

:class:`~npcompile.pipeline.Pass` builds the ``Options`` from the constructor's arguments (by
keyword, or by position in field order), exposes every field as an attribute of the pass
(``self.ratio``) and keeps the dataclass as ``self.config``; ``self.options`` (what the report
lists with the pass) is the recorded fields, in field order. The TOML name of an option is its
field name: :func:`option_names` is what ``instantiate`` checks pipeline-file keys against.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, Field, field, fields, is_dataclass
from typing import Any, ClassVar

__all__ = ["PassOptions", "option", "option_names", "build_options", "recorded_options"]


class PassOptions:
    """Base of a pass's ``Options`` (a frozen dataclass); :meth:`_set` lets ``__post_init__``
    store a normalised value (``self._set(loss=self.loss.lower())``). ``record_order``: the
    recorded options in the order the report lists them, where that is not the field order."""

    record_order: ClassVar[tuple[str, ...] | None] = None

    def _set(self, **values: Any) -> None:
        for k, v in values.items():
            object.__setattr__(self, k, v)


def option(default: Any = MISSING, *, record: bool = True, report: Callable[[Any], Any] | None = None,
           default_factory: Any = MISSING, init: bool = True) -> Any:
    """A field of a pass's ``Options``; ``record=False``: not listed with the pass in the report
    (data sets, objects, options that do not change the result); ``report``: what the report lists
    for the value (e.g. an evaluator's name); ``init=False``: not an option but a value
    ``__post_init__`` derives from the options (``self._set(name=...)``)."""
    return field(default=default, default_factory=default_factory, init=init,
                 metadata={"record": record and init, "report": report})


def _fields(options_cls: type) -> tuple[Field, ...]:
    if not is_dataclass(options_cls):
        raise TypeError(f"{options_cls.__qualname__} must be a dataclass")
    return fields(options_cls)


def build_options(options_cls: type, owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``options_cls`` from constructor arguments; a wrong argument is Python's own TypeError, named
    after the pass (``SelectPass.__init__() got an unexpected keyword argument 'x'``)."""
    _fields(options_cls)
    try:
        return options_cls(*args, **kwargs)
    except TypeError as e:
        prefix = f"{options_cls.__init__.__qualname__}()"
        if str(e).startswith(prefix):
            raise TypeError(f"{owner}.__init__(){str(e)[len(prefix):]}") from None
        raise


def recorded_options(config: Any) -> dict[str, Any]:
    """The recorded fields of ``config`` (an ``Options`` instance), in field order (or in the
    order of its ``record_order``), each as its ``report`` function makes it."""
    recorded = {f.name: f for f in fields(config) if f.init and f.metadata.get("record", True)}
    out = {}
    for name in getattr(config, "record_order", None) or recorded:
        report = recorded[name].metadata.get("report")
        value = getattr(config, name)
        out[name] = report(value) if report is not None else value
    return out


def option_names(cls: type) -> tuple[list[str], bool]:
    """The option names a pass class takes, and whether it takes any name (``**kwargs``): its
    ``Options`` fields, or the parameters of an old-style ``__init__``."""
    from npcompile.pipeline.core import Pass

    options_cls = getattr(cls, "Options", None)
    if options_cls is not None and cls.__init__ is Pass.__init__:
        return [f.name for f in _fields(options_cls) if f.init], False
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return [k for k in params if k not in ("self", "args", "kwargs")], accepts_any
