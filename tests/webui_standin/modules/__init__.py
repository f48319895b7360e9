"""Stand-in of the webui's `modules` package for CI (see ../README.md). Not the webui."""
