"""The Jacobian's spectrum on an untrained stack: singular values and tangents against autograd."""
import numpy as np
import torch

from finetune.tangents import explicit_jacobian, tangents
from pipelines.analysis.spectrum import jacobian_singular_values
from pretrain.autoencoder import AutoEncoder
from pretrain.rbm import RBM
from pretrain.stack import Stack


def _stack():
    torch.manual_seed(0)  # not used by the layers (seeded), kept out of the global stream anyway
    return Stack([AutoEncoder(12, 7, hidden_unit="tanh", seed=0), RBM(7, 5, seed=1)]).double()


def test_jacobians_singular_values_and_tangents_match_autograd():
    stack = _stack()
    with torch.no_grad():
        stack[1].W.mul_(100)  # RBM init is N(0, 0.01^2): make the second layer matter
    X = torch.rand(9, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    J = torch.stack([torch.autograd.functional.jacobian(lambda v: stack.encode(v[None])[0], x) for x in X])
    with torch.no_grad():
        torch.testing.assert_close(explicit_jacobian(stack, X), J, rtol=1e-10, atol=1e-12)
    S = jacobian_singular_values(stack, X, batch_size=4)  # batches of 4, 4, 1
    np.testing.assert_allclose(S, torch.linalg.svdvals(J).float().numpy(), rtol=1e-5, atol=1e-7)
    U, S3 = tangents(stack, X, 3, method="explicit")  # what spectrum_run shows as tangent images
    assert U.shape == (9, 3, 12) and S3.shape == (9, 3)
    U = U.double()
    torch.testing.assert_close(U @ U.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(9, 3, 3),
                               atol=1e-4, rtol=0)
    # u_i are right singular vectors: ||J u_i|| = s_i
    torch.testing.assert_close(torch.linalg.vector_norm(J @ U.transpose(1, 2), dim=1),
                               torch.from_numpy(S[:, :3]).double(), rtol=1e-3, atol=1e-6)
