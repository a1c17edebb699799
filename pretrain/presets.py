"""Layer kinds by name, with literature defaults: ``make_layer("cae", 784, 500, seed=3)``.

Every autoencoder kind is one ``AutoEncoder`` with a different corruption and penalty; the two
RBM kinds are one ``RBM`` with Bernoulli or Gaussian visible units. A preset holds only the
settings that define the kind; everything else is the class's own default, and any keyword the
class accepts can be overridden (overrides win over the preset).

Sources of the defaults (all with the autoencoder's loss summed over inputs, averaged over the
batch):
- ``dae``: masking noise destroying 25% of the inputs, inside the range of destruction
  fractions (10% to 40%) that Vincent et al. (2008; JMLR 2010) choose from by validation.
- ``cae``: lambda = 0.1, the Theano tutorial ``cA.py``'s ``contraction_level`` under the same
  loss convention (Rifai et al. 2011 select lambda by validation).
- ``cae_h``: lambda = 0.1 and gamma = 0.1 with 4 perturbed copies of std 0.3: starting points
  in the ranges Rifai et al. (ECML 2011) search by validation, not values quoted from it;
  retune them per dataset.
- ``sparse``: KL sparsity with target rho = 0.05 and weight beta = 3 (Ng, CS294A sparse
  autoencoder notes and exercise).
- ``conv_ae``: a plain convolutional autoencoder (``pretrain.conv_autoencoder``); its
  corruption and penalties are set as for the dense kinds (``corruption``, ``contraction``, ...).
- ``whiten``: ZCA with eps = 0.1, the epsilon of the UFLDL tutorial's exercise that ZCA-whitens
  image patches for a sparse autoencoder with linear decoder (Ng et al., "Linear decoders");
  eps is in the inputs' squared units (pixels in [0, 1]): retune it with the data's scale.
- ``psd``: lambda = 1 and alpha = 1 (``code_l1``, ``prediction_weight``), with FISTA stopped
  after 50 iterations or at a relative change of 1e-4, the defaults of Kavukcuoglu, Ranzato &
  LeCun's PSD code (``unsup``: ``demo_psd.lua``, ``FistaL1``) for contrast-normalised image
  patches; lambda is in the inputs' squared units: retune it with the data's scale.
"""
from __future__ import annotations

import inspect

from pretrain.autoencoder import AutoEncoder
from pretrain.checks import check_choice
from pretrain.conv_autoencoder import ConvAutoEncoder
from pretrain.layer import Layer
from pretrain.names import KINDS
from pretrain.psd import PSD
from pretrain.rbm import RBM
from pretrain.whitening import Whitening

PRESETS: dict[str, dict] = {
    "ae": {},
    "dae": {"corruption": "masking", "corruption_level": 0.25},
    "cae": {"contraction": 0.1},
    "cae_h": {"contraction": 0.1, "higher_order": 0.1, "higher_order_sigma": 0.3,
              "higher_order_copies": 4},
    "sparse": {"sparsity_kl": 3.0, "sparsity_target": 0.05},
    "rbm": {"visible": "bernoulli"},
    "grbm": {"visible": "gaussian"},
    "conv_ae": {},
    "whiten": {"whitening": "zca", "epsilon": 0.1},
    "psd": {"code_l1": 1.0, "prediction_weight": 1.0},
}


def layer_class(kind: str) -> type[Layer]:
    """The class that builds ``kind``."""
    check_choice("layer kind", kind, KINDS)
    if kind == "conv_ae":
        return ConvAutoEncoder
    if kind == "whiten":
        return Whitening
    if kind == "psd":
        return PSD
    return RBM if kind in ("rbm", "grbm") else AutoEncoder


def accepted_keys(kind: str) -> tuple[str, ...]:
    """Keyword-only hyperparameters that ``kind``'s constructor accepts."""
    params = inspect.signature(layer_class(kind).__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def make_layer(kind: str, n_visible: int, n_hidden: int, /, **overrides) -> Layer:
    """Build a layer of ``kind`` (one of ``KINDS``): its preset, then ``overrides``.

    Raises
    ------
    ValueError
        for an unknown kind, for an override the kind does not accept (naming it and the
        accepted keys), or for a bad value (raised by the layer's constructor).
    """
    accepted = accepted_keys(kind)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(f"layer kind {kind!r} does not accept {', '.join(map(repr, unknown))}; "
                         f"it accepts {', '.join(accepted)}")
    return layer_class(kind)(n_visible, n_hidden, **{**PRESETS[kind], **overrides})
