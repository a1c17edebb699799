"""The names a layer is configured by, free of torch so that the config validates them
without importing it."""

#: layer kinds of ``pretrain.presets``
KINDS = ("ae", "dae", "cae", "cae_h", "sparse", "rbm", "grbm", "conv_ae", "whiten", "psd")
#: units s of ``pretrain.units``
UNITS = ("sigmoid", "tanh", "relu", "linear")
#: an RBM's hidden units (``pretrain.rbm``): binary, or linear with unit-variance Gaussian noise
RBM_HIDDEN = ("bernoulli", "gaussian")
#: reconstruction losses of ``pretrain.autoencoder``
LOSSES = ("cross_entropy", "mse")
#: corruption processes of ``pretrain.corruption``
CORRUPTIONS = ("none", "gaussian", "masking", "salt_pepper")
#: optimizers of ``pretrain.module.Module``
OPTIMIZERS = ("sgd", "adam")
#: padding modes of a convolutional layer (``pretrain.conv_maps``)
PADDINGS = ("valid", "same")
#: whitening transforms of ``pretrain.whitening``
WHITENINGS = ("zca", "pca")
