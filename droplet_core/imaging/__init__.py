"""Images in and out: loading and checking uploads, colour channels, display contrast, pixel sizes."""
