"""The fit's variational guide: independent normal posteriors over every latent site.

``MeanFieldGuide`` is the guide (a pure function, so it compiles with the fit's programs);
``latent_sites`` traces a variant's model to find its sites; ``OrderedTraceELBO`` is the
loss, with a fixed order of terms so that fits are bit-reproducible across processes;
``Evaluation`` is what a fit looks like at its guide's medians (``engine.Programs.evaluate``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost
from numpyro.handlers import replay, seed, trace
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import log_density

# The plate of per-droplet sites in every variant's model.
DROPLET_PLATE = "droplets"


class LatentSite(NamedTuple):
    """A latent site's support, its number of event dimensions, whether it is one of the
    per-droplet sites (in the model's ``"droplets"`` plate), and its shape."""

    support: constraints.Constraint
    event_dim: int
    per_droplet: bool
    shape: tuple[int, ...]


class MeanFieldGuide:
    """Independent normal posteriors in each latent's unconstrained space (as ``AutoNormal``).

    Written out instead of ``AutoNormal`` because AutoNormal discovers the model by running
    it eagerly, op by op, which costs seconds of XLA compilation for every new image size;
    this guide is a pure function, so ``svi.init`` is jitted like the updates. Parameters are
    named ``<site>_auto_loc`` / ``<site>_auto_scale`` like AutoNormal's; their starting values
    come from ``initial_params`` through ``svi.init(..., init_params=...)``, so that no
    image's values are compiled into the programs.
    """

    def __init__(self, sites: dict):
        self.transforms = {name: biject_to(site.support) for name, site in sites.items()}
        self.event_dims = {name: site.event_dim for name, site in sites.items()}
        self.shapes = {name: self.transforms[name].inverse_shape(site.shape) for name, site in sites.items()}
        # One program for all sites: op by op, every transform's ops would compile on their own.
        self.constrained = jax.jit(self._constrained)
        self.unconstrained = jax.jit(self._unconstrained)

    def _constrained(self, locs: dict) -> dict:
        """The values of some sites at unconstrained locations ``locs``."""
        return {name: self.transforms[name](loc) for name, loc in locs.items()}

    def _unconstrained(self, values: dict) -> dict:
        """The unconstrained locations of the (constrained) ``values`` of some sites."""
        return {name: self.transforms[name].inv(value) for name, value in values.items()}

    def initial_params(self, values: dict, scale: float) -> dict:
        """Guide parameters of the sites in ``values`` (constrained), centred on them with ``scale``."""
        locs = self.unconstrained({name: np.asarray(value, np.float32) for name, value in values.items()})
        params = {}
        for name, loc in locs.items():
            params[f"{name}_auto_loc"] = np.asarray(loc)
            params[f"{name}_auto_scale"] = np.full(loc.shape, scale, np.float32)
        return params

    def __call__(self, *args, **kwargs):
        locs, scales = {}, {}
        for name, shape in self.shapes.items():
            locs[name] = numpyro.param(f"{name}_auto_loc", jnp.zeros(shape))
            scales[name] = numpyro.param(
                f"{name}_auto_scale", jnp.ones(shape), constraint=constraints.softplus_positive
            )
        # One normal draw for all sites, handed out in slices: XLA compiles every
        # random.normal call on its own, and per-site draws were most of a fit's compile time.
        sizes = [int(np.prod(jnp.shape(loc))) for loc in locs.values()]
        noise = jax.random.normal(numpyro.prng_key(), (sum(sizes),))
        offset = 0
        for (name, transform), size in zip(self.transforms.items(), sizes):
            loc, scale = locs[name], scales[name]
            unconstrained = loc + scale * noise[offset : offset + size].reshape(jnp.shape(loc))
            offset += size
            value = transform(unconstrained)
            event_dim = self.event_dims[name]
            # log q(value): the normal density of the unconstrained draw, less the log Jacobian.
            log_q = sum_rightmost(dist.Normal(loc, scale).log_prob(unconstrained), event_dim) - sum_rightmost(
                transform.log_abs_det_jacobian(unconstrained, value), event_dim - transform.domain.event_dim
            )
            numpyro.sample(name, dist.Delta(value, log_density=log_q, event_dim=event_dim))

    def median(self, params: dict) -> dict:
        """Each latent's posterior median, in its own (constrained) space."""
        return self._constrained({name: params[f"{name}_auto_loc"] for name in self.transforms})


class OrderedTraceELBO(Trace_ELBO):
    """``Trace_ELBO`` with one particle, its ``log p - log q`` terms summed in trace order.

    ``Trace_ELBO`` sums over a Python set of site names, whose order follows the process's
    string-hash seed: the compiled program, and the rounding of the loss, then differ from
    one process to the next, so a fit is not bit-reproducible across processes and no
    process can reuse another's compiled program from the compilation cache.
    """

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        model_key, guide_key = jax.random.split(rng_key)
        log_q, guide_trace = log_density(seed(guide, guide_key), args, kwargs, param_map)
        log_p, _ = log_density(replay(seed(model, model_key), guide_trace), args, kwargs, param_map)
        return {"loss": log_q - log_p, "mutable_state": None}


def latent_sites(model, *args) -> dict:
    """``{name: LatentSite}`` of every latent site of ``model(*args)``, traced abstractly."""
    supports = {}

    def record(*args):
        sites = trace(seed(model, 0)).get_trace(*args)
        supports.update(
            {
                name: LatentSite(
                    site["fn"].support,
                    len(site["fn"].event_shape),
                    any(frame.name == DROPLET_PLATE for frame in site["cond_indep_stack"]),
                    tuple(site["value"].shape),
                )
                for name, site in sites.items()
                if site["type"] == "sample" and not site["is_observed"]
            }
        )
        return 0

    jax.eval_shape(record, *args)
    return supports


class Evaluation(NamedTuple):
    """A fit evaluated at its guide medians (``Programs.evaluate``).

    ``values`` ``{site: value}`` of every latent site (constrained); ``reconstruction`` the
    ``(h, w, c)`` rendering; ``strength`` ``(n,)`` each droplet's strongest effect on the
    image (channel units); ``log_prior`` ``(n,)`` each droplet's log prior density in its
    guide's unconstrained space; ``prior_curvature`` ``{site: (n, ...)}`` minus the second
    derivative of that log prior in each unconstrained coordinate.
    """

    values: dict
    reconstruction: jax.Array
    strength: jax.Array
    log_prior: jax.Array
    prior_curvature: dict
