"""The `upf` command and the launchers that compose the platform, above everything else.

It is the one package that imports the gateway, the registry and the plugins together: `upf run`
(allinone.py) starts all of them in one process, `upf gateway` / `upf registry` / `upf plugin NAME`
start one each. Nothing imports this package except the plugins' `python -m plugins.NAME` entry points,
which are the same commands (`make check` holds the order: pyproject.toml's import-linter contracts).
`upf` itself is the namespace of the generated protobuf code, hence the name `cli`.
"""
