"""Finding droplets without fitting: the trained detector network on an image pyramid, Laplacian-of-Gaussian
candidates, the downscale a fit should run at, and scoring detections against truth."""
