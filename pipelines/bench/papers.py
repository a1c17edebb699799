"""The published figures the benchmark suites compare with, and the protocols they come from.

Sources:

- Rifai, Dauphin, Vincent, Bengio & Muller, The Manifold Tangent Classifier, NIPS 2011 (the
  MTC paper): its semi-supervised MNIST table (% test error with L = 100, 600, 1000, 3000
  labeled images) and its knowledge-free MNIST table (% test error with every pool label and
  no prior knowledge of images).
- Rifai, Vincent, Muller, Glorot & Bengio, Contractive Auto-Encoders, ICML 2011 (the CAE
  paper): its table of stacked models on the Larochelle et al. (2007) variations benchmark
  (% test error; the benchmark has no ``convex`` row there).
- Hinton & Salakhutdinov, Reducing the dimensionality of data with neural networks, Science
  2006: Fig. 2's caption, the squared reconstruction error per MNIST test image of the
  784-1000-500-250-30 autoencoder and of PCA with 30 components.
- Rasmus, Valpola, Honkala, Berglund & Raiko, Semi-supervised learning with ladder networks,
  NIPS 2015 (the Ladder paper): its permutation-invariant semi-supervised MNIST table, % test
  error with 100 labels, mean ± std over ten label draws (1.06 ± 0.37).
- Miyato, Maeda, Koyama & Ishii, Virtual adversarial training: a regularization method for
  supervised and semi-supervised learning, IEEE TPAMI 2018 (the VAT paper): its
  permutation-invariant semi-supervised MNIST table, % test error with 100 labels (1.36).

The MNIST protocol of these papers: the first 50000 training images are the pool (unlabeled
for pretraining, labels drawn from it), the last 10000 training images validate, and the
official 10000 test images test.
"""
from __future__ import annotations

MNIST_POOL = 50000   # the first 50000 MNIST training images: the pool
MNIST_VALID = 10000  # the last 10000 MNIST training images: the validation set

#: the MTC paper's semi-supervised MNIST table: label counts, % test error per label count
LABELS = (100, 600, 1000, 3000)
SEMI_PAPER = {
    "NN": (25.81, 11.44, 10.7, 6.04), "SVM": (23.44, 8.85, 7.77, 4.21),
    "CNN": (22.98, 7.68, 6.45, 3.35), "TSVM": (16.81, 6.16, 5.38, 3.45),
    "EmbedNN": (16.86, 5.97, 5.73, 3.59), "CAE": (13.47, 6.3, 4.77, 3.22),
    "MTC": (12.03, 5.13, 3.64, 2.57)}

#: the MTC paper's knowledge-free MNIST table, % test error: the methods a suite runs, and the
#: others of the table, for context
KNOWLEDGE_FREE_PAPER = {"knn": 3.09, "nn": 1.60, "svm": 1.40, "dbn": 1.17, "cae": 1.04, "mtc": 0.81}
KNOWLEDGE_FREE_CONTEXT = {"DBM": 0.95, "CNN": 0.95}

#: the CAE paper's table of stacked models on the Larochelle et al. variations, % test error
VARIATION_COLUMNS = ("SVM", "SAE-3", "RBM-3", "DAE-b-3", "CAE-1", "CAE-2")
VARIATIONS_PAPER = {
    "mnist-basic": (3.03, 3.46, 3.11, 2.84, 2.83, 2.48),
    "mnist-rot": (11.11, 10.30, 10.30, 9.53, 11.59, 9.66),
    "mnist-bg-rand": (14.58, 11.28, 6.73, 10.30, 13.57, 10.90),
    "mnist-bg-img": (22.61, 23.00, 16.31, 16.68, 16.70, 15.50),
    "mnist-bg-img-rot": (55.18, 51.93, 47.39, 43.76, 48.10, 45.23),
    "rect": (2.15, 2.41, 2.60, 1.99, 1.48, 1.21),
    "rect-img": (24.04, 24.05, 22.50, 21.59, 21.86, 21.54)}

#: the Ladder and VAT papers, permutation-invariant semi-supervised MNIST: % test error by label
#: count (the published counts only), and the Ladder paper's std over its label draws
MODERN_SEMI_PAPER = {"Ladder": {100: 1.06}, "VAT": {100: 1.36}}
MODERN_SEMI_STD = {"Ladder": {100: 0.37}}

#: Hinton & Salakhutdinov 2006, Fig. 2 caption: squared error per MNIST test image
AUTOENCODER_PAPER = {"rbm-pretrained": 3.00, "pca": 13.87, "logistic-pca": 8.01}
