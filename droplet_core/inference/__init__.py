"""Fitting a model variant to an image: the SVI engine and its guide, the reuse fit of a learned appearance,
switching droplets on and off (the droplet count), the Laplace uncertainty and the fit's verdict on itself."""
