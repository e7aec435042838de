"""Command-line entry point of rgb2thermal (`rgb2thermal --help`)."""
