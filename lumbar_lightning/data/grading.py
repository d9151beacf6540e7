"""Grade schemes: which stenosis grades a data set's labels use, in order of severity, and how each is weighted.

``grading=schizas`` (the default: Schizas A-D, as in the study) or ``grading=rsna`` (the RSNA 2024 challenge's
Normal/Mild, Moderate, Severe, scored with sample weights 1/2/4). The scheme is part of the run's config; every
entry point activates it once (``activate``), and the labels' validation, the grader's outputs, every statistic,
report, figure and W&B table read its classes from ``active()``, so one run never mixes two schemes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lumbar_lightning.data.errors import DataContractError


class GradingScheme:
    """The grade classes in order of severity (the ordinal loss and "two grades apart" use that order), the
    classes whose recall the reports headline (``severe``), and optional class weights (``weights``: the
    weighted log loss is then reported beside accuracy, F1 and kappa).

    A plain class, not a dataclass: Hydra builds it (``_target_``) and would turn a dataclass into a config.
    """

    def __init__(
        self,
        name: str,
        classes: Sequence[str],
        severe: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        self.name, self.classes = str(name), tuple(str(c) for c in classes)
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(
                f"grading {name!r}: classes must be two or more distinct names, got {self.classes}"
            )
        self.severe = tuple(str(c) for c in severe) if severe is not None else self.classes[-2:]
        if unknown := [c for c in self.severe if c not in self.classes]:
            raise ValueError(f"grading {name!r}: severe classes {unknown} are not among {self.classes}")
        self.weights = tuple(float(w) for w in weights) if weights is not None else None
        if self.weights is not None and len(self.weights) != len(self.classes):
            raise ValueError(f"grading {name!r}: {len(self.weights)} weights for {len(self.classes)} classes")

    @property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "severe": list(self.severe),
            "weights": self.weights,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GradingScheme) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return f"GradingScheme({self.name!r}, {list(self.classes)})"


SCHIZAS = GradingScheme("schizas", ("A", "B", "C", "D"), severe=("C", "D"))
_active: list[GradingScheme] = [SCHIZAS]


def scheme_of_node(node: dict[str, Any]) -> GradingScheme:
    """A scheme from its config node (``conf/grading/*.yaml`` as a dict, with or without ``_target_``)."""
    return GradingScheme(**{k: v for k, v in dict(node).items() if k != "_target_"})


def active() -> GradingScheme:
    """The scheme of the run in progress (Schizas until a run activates another)."""
    return _active[-1]


def activate(scheme: GradingScheme | dict[str, Any] | None) -> GradingScheme:
    """Make ``scheme`` (a scheme, or its config node with or without ``_target_``) the run's scheme."""
    if scheme is None:
        return active()
    if not isinstance(scheme, GradingScheme):
        scheme = scheme_of_node(scheme)
    _active[-1] = scheme
    return scheme


def scheme_of_config(cfg: Any) -> GradingScheme:
    """The scheme a composed config names (its ``grading`` node; none: Schizas)."""
    from omegaconf import OmegaConf

    node = cfg.get("grading") if hasattr(cfg, "get") else None
    if node is None:
        return SCHIZAS
    return scheme_of_node(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]


def activate_from(cfg: Any) -> GradingScheme:
    """Activate the scheme of a composed config (``scheme_of_config``)."""
    return activate(scheme_of_config(cfg))


def run_scheme(run_dir: Path | str) -> GradingScheme | None:
    """The scheme a finished run graded in, from the config it saved (``RunLayout.trained_config``); None when
    the run saved no config."""
    from omegaconf import OmegaConf

    from lumbar_lightning.layout import RunLayout

    config = RunLayout(run_dir).trained_config
    return scheme_of_config(OmegaConf.load(config)) if config.is_file() else None


def activate_runs(*run_dirs: Path | str, fallback: Any = None) -> GradingScheme:
    """Activate the scheme the finished runs graded in, so that an app reading them (``lumbar-compare``,
    ``lumbar-record``) grades them as they were trained, whatever ``grading=`` says on its own command line.
    Runs graded in different schemes cannot be read together (a ``DataContractError`` naming each); runs that
    saved no config take ``fallback``'s (a composed config)."""
    found = {str(d): s for d in run_dirs if (s := run_scheme(d)) is not None}
    schemes = list(found.values())
    if any(s != schemes[0] for s in schemes):
        raise DataContractError(
            "runs graded in different schemes cannot be read together: "
            + ", ".join(f"{d} ({s.name}: {'/'.join(s.classes)})" for d, s in found.items())
        )
    if schemes:
        return activate(schemes[0])
    return activate_from(fallback) if fallback is not None else activate(SCHIZAS)


def preset(name: str) -> GradingScheme:
    """A shipped scheme by name (``conf/grading/<name>.yaml``), as ``grading=<name>`` composes it."""
    from omegaconf import OmegaConf

    from lumbar_lightning.conf import CONF_DIR

    path = Path(CONF_DIR) / "grading" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"no grading scheme {name!r} (known: {', '.join(known)})")
    return scheme_of_node(OmegaConf.to_container(OmegaConf.load(path), resolve=True))  # type: ignore[arg-type]


@contextlib.contextmanager
def grading(scheme: GradingScheme) -> Iterator[GradingScheme]:
    """Use ``scheme`` inside the block only (tests, and a library user mixing data sets in one process)."""
    _active.append(scheme)
    try:
        yield scheme
    finally:
        _active.pop()
