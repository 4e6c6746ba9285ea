"""Trials that complete but must not be ranked: collapsed, or did not learn.

A trial with these flags keeps its state (COMPLETE) and its value, so the sampler still learns from
it, and is tagged with the evidence. In a study judged by sample quality (a score objective) it is
also excluded: never reported as best (search, progress lines, report, confirm). A study judged by
reconstruction or a loss only tags it (a VAE's best reconstruction is that, whatever its samples), as
does `[scores] flags = "tag"`. Both tests use numbers every trial's final scores have:

- collapsed: diversity_<extractor> below COLLAPSE_DIVERSITY. Diversity is the median nearest-
  neighbour distance among the generated images over the same among real images, in the
  extractor's standardised features (harness/scoring/scores.py; for domain-v5 its learned block only, where
  this bar was set, not the detail beside it): about 1 for real data. Measured on synthfaces 32 at
  n = 2,000 (domain-v4 features, the same learned block): real 1.0; every disturbance of the validation panel
  0.91 to 1.37; real images at a quarter of the resolution 0.64; 8 real images repeated, the mean
  image repeated and a checkerboard 0. Half the real data's spread sits between the mildest
  generator that has every mode (0.64) and the collapsed ones (0). The conv VAE at its reference
  configuration after 300 and 1,000 steps scores 0.42 and 0.32 (blurry faces that differ mostly in
  brightness; recall 0.01 and 0.02) and is flagged; DCGAN after 300 steps scores 1.10 (recall 0.64).
  Recall alone was left out: after 60 steps it was at most 0.05 for every trial of families_compare,
  the DCGAN's first faces and noise alike, and it is near zero for noise, which is not a collapse.
- did not learn: a Fréchet distance worse than the best of the panel's broken generators that
  learned nothing about faces (uniform noise, the mean image repeated, a checkerboard), scored by
  the same extractor at the same n against the same reference (the session's panel). The three
  other broken generators are real images (8 repeated; at a quarter and at half the resolution): a
  trained model can score worse than those and still have learned faces, so they are not the bar;
  the collapse flag covers the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from harness.core import keys

if TYPE_CHECKING:
    import optuna

COLLAPSED, DID_NOT_LEARN = "collapsed", "did_not_learn"
COLLAPSE_DIVERSITY = 0.5
NOTHING_LEARNED = ("uniform_noise", "mean_image", "checkerboard")  # panel sets that know nothing of faces


@dataclass(frozen=True)
class Flags:
    names: tuple[str, ...]  # COLLAPSED, DID_NOT_LEARN, or none
    evidence: str  # one line: the numbers behind each flag, or why a test could not be made
    excluded: bool = False  # never reported as best (flagged, in a study that excludes)

    @property
    def text(self) -> str:
        """As tagged: comma-separated names, or "none"."""
        return ",".join(self.names) or "none"


def baseline(panel_scores: Mapping[tuple[str, int], float]) -> tuple[str, float] | None:
    """The did-not-learn bar: the best-scoring panel set of NOTHING_LEARNED, or None without a panel."""
    scored = [(name, panel_scores[(name, 0)]) for name in NOTHING_LEARNED if (name, 0) in panel_scores]
    return min(scored, key=lambda item: item[1]) if scored else None


def excludes(objective: str, setting: str) -> bool:
    """Whether flags exclude trials from "best" in a study with this (logged) first objective and
    [scores] flags setting: only when the objective is a sample-quality score."""
    _, metric = keys.split_of(objective) or ("", objective)
    return setting == "exclude" and keys.score_kind(metric) is not None


def judge(metrics: Mapping[str, float], extractor: str, bar: tuple[str, float] | None, exclude: bool = True) -> Flags:
    """The flags of a complete trial from its final scores; `exclude`: see `excludes`."""
    names, evidence = [], []
    diversity = metrics.get(keys.score_key("diversity", extractor))
    if diversity is None:
        evidence.append("no diversity score: collapse not tested")
    elif diversity < COLLAPSE_DIVERSITY:
        names.append(COLLAPSED)
        evidence.append(f"collapsed: diversity {diversity:.3g} < {COLLAPSE_DIVERSITY} (real data: 1)")
    fd_key = keys.score_key("fd", extractor)
    fd = metrics.get(fd_key)
    if fd is None or bar is None:
        evidence.append("no " + (fd_key if fd is None else "validation panel") + ": learning not tested")
    elif fd > bar[1]:
        names.append(DID_NOT_LEARN)
        evidence.append(f"did not learn: {fd_key} {fd:.4g} > {bar[1]:.4g} of the panel's {bar[0]}")
    return Flags(tuple(names), "; ".join(evidence) or f"none: diversity {diversity:.3g}, {fd_key} {fd:.4g}"
                 + (f" (bar {bar[1]:.4g}, {bar[0]})" if bar else ""), exclude and bool(names))


def ranked_trials(study: "optuna.Study") -> list["optuna.trial.FrozenTrial"]:
    """The complete trials that may be reported as best: none excluded by its flags."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t for t in complete if not t.user_attrs.get(keys.Attr.EXCLUDED, False)]


def best_ranked(study: "optuna.Study", maximize: bool = False) -> "optuna.trial.FrozenTrial | None":
    """The best complete trial not excluded by its flags, of a single-objective study (Optuna's
    best_trial may be excluded)."""
    ranked = ranked_trials(study)
    return (max if maximize else min)(ranked, key=lambda t: t.value) if ranked else None
