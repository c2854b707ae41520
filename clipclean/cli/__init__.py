"""Command-line support: argument groups, accelerator set-up and output folders shared by ``recipes/``,
``eval/`` and the ``clipclean`` command. The library modules never import this package."""
