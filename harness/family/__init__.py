"""What `models/` is written against: the declaration of a family and the contract of its functions
(contract), the registry that collects them (registry), hyperparameter spaces (space), the
adversarial pair (adversarial), fused steps (fused), the training fast path (fast_path) and images
from a fixed z (generate)."""

from harness.core.lazy import lazy_exports

_EXPORTS = {
    "Family": "contract", "Build": "contract", "MakeOptimizers": "contract", "TrainStep": "contract",
    "EvalStep": "contract",
    "register_family": "registry", "get_family": "registry", "family_names": "registry", "RegistryError": "registry",
    "Param": "space", "FloatParam": "space", "IntParam": "space", "ChoiceParam": "space", "FixedParam": "space",
    "AdversarialPair": "adversarial", "Fused": "fused", "Stack": "fused", "FastPath": "fast_path", "PLAIN": "fast_path",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
