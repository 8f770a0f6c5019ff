"""chatbench: the CLI that orchestrates servers, swarms and results."""
