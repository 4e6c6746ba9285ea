"""Study files: the named, versioned declaration of one search (studyfile), its sampler and pruner
(samplers) and the seed reports' claims it tests (claims)."""

from harness.core.lazy import lazy_exports

_EXPORTS = {
    "StudySpec": "studyfile", "load_study": "studyfile", "find_study": "studyfile", "study_names": "studyfile",
    "parse_study": "studyfile", "Claim": "claims", "parse_claims": "claims", "make_sampler": "samplers",
    "make_pruner": "samplers",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
