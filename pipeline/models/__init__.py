"""Backbones (registry.py resolves their names), heads, and the embedding and classifier models of
teachers and students. Import from the submodules: this package imports nothing, so loading one model
does not import every backbone."""
