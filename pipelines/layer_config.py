"""The config of one pretraining layer: a kind (a ``pretrain.presets`` preset) plus the
hyperparameters it overrides, and the base of every config section.

Every field a layer kind accepts is declared once, here, and validated by the layer itself;
``pipelines.config`` assembles the sections into a pipeline's config.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from pretrain.checks import check_choice
from pretrain.names import CORRUPTIONS, KINDS, LOSSES, OPTIMIZERS, PADDINGS, RBM_HIDDEN, UNITS, WHITENINGS


class Section(BaseModel):
    """A config section: unknown keys are rejected, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LayerConfig(Section):
    """One layer of the stack: a kind (a preset) plus the hyperparameters it overrides.

    Fields left at None take the preset's value (``pretrain.presets``); the layer itself
    validates the values and names the bad one.
    """

    kind: str
    n_hidden: int = Field(ge=1)
    epochs: int | None = Field(None, ge=1)       # None: pretrain.epochs
    batch_size: int | None = Field(None, ge=1)   # None: pretrain.batch_size
    # optimisation (every kind)
    lr: float | None = Field(None, gt=0)
    optimizer: Literal[OPTIMIZERS] | None = None
    momentum: float | None = Field(None, ge=0, le=1)
    weight_decay: float | None = Field(None, ge=0)
    # autoencoders
    hidden_unit: Literal[UNITS] | None = None
    visible_unit: Literal[UNITS] | None = None
    tied: bool | None = None
    loss: Literal[LOSSES] | None = None
    corruption: Literal[CORRUPTIONS] | None = None
    corruption_level: float | None = Field(None, ge=0)
    contraction: float | None = Field(None, ge=0)
    higher_order: float | None = Field(None, ge=0)
    higher_order_sigma: float | None = Field(None, ge=0)
    higher_order_copies: int | None = Field(None, ge=1)
    sparsity_l1: float | None = Field(None, ge=0)
    sparsity_kl: float | None = Field(None, ge=0)
    sparsity_target: float | None = Field(None, gt=0, lt=1)
    # RBMs
    k: int | None = Field(None, ge=1)
    persistent: bool | None = None
    sigma: float | None = Field(None, gt=0)
    hidden: Literal[RBM_HIDDEN] | None = None     # binary or Gaussian (linear) hidden units (pretrain.rbm)
    centred: bool | None = None                  # centred gradient (pretrain.rbm, Eqs. 14-16)
    centring_rate: float | None = Field(None, gt=0, le=1)
    # whitening (pretrain.whitening)
    whitening: Literal[WHITENINGS] | None = None
    epsilon: float | None = Field(None, ge=0)
    # predictive sparse decomposition (pretrain.psd)
    code_l1: float | None = Field(None, ge=0)             # lambda of ||z||_1
    prediction_weight: float | None = Field(None, ge=0)   # alpha of ||z - F(x)||^2
    ista_steps: int | None = Field(None, ge=1)            # most FISTA iterations per batch
    ista_tol: float | None = Field(None, ge=0)            # FISTA's relative change to stop at
    # convolutional autoencoders (pretrain.conv_autoencoder); n_hidden = maps * H' * W'
    maps: int | None = Field(None, ge=1)                  # feature maps M
    kernel: PositiveInt | tuple[PositiveInt, PositiveInt] | None = None  # filter size k or [k_h, k_w]
    padding: Literal[PADDINGS] | None = None              # valid (none) or same (zeros)
    pool: int | None = Field(None, ge=1)                  # max-pooling window p
    # [C, H, W] of the input images; None: the maps of the convolutional layer below
    in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None

    #: fields added after layer caches existed: left out of the digest while unset, so that the
    #: stacks cached before them are found again (a field set to any value is in the digest)
    DIGEST_WHEN_SET: ClassVar[tuple[str, ...]] = ("hidden", "centred", "centring_rate", "whitening", "epsilon",
                                                  "code_l1", "prediction_weight", "ista_steps", "ista_tol",
                                                  "maps", "kernel", "padding", "pool", "in_shape")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return check_choice("layer kind", v, KINDS)

    def layer_kwargs(self) -> dict[str, Any]:
        """The overrides passed to ``pretrain.presets.make_layer`` (fields that were set)."""
        skip = {"kind", "n_hidden", "epochs", "batch_size"}
        return {k: v for k, v in self.model_dump().items() if k not in skip and v is not None}
