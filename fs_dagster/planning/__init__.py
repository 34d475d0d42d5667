"""Layer 2: what a feature set compiles to: names, paths and table layouts. Pure."""
