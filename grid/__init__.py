"""Grid files, expansion into trials, scheduling on Ray Tune, and the `ftgrid` command line."""
