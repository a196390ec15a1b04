"""The Levenberg-Marquardt damping of a reuse fit's per-droplet steps, shared by the host step
(``droplet_core.inference.reuse_fit``) and the compiled one (``droplet_core.inference.reuse_compiled``)."""

# Damping relative to each block's diagonal: where it starts, and how it shrinks after a step
# that helped and grows after one that did not.
INITIAL_DAMPING = 0.1
DAMPING_DOWN, DAMPING_UP = 1.0 / 3.0, 10.0
DAMPING_RANGE = (1e-4, 1e4)
# Steps tried per iteration: a droplet whose first step did not help tries a more damped one.
TRIES = 2
