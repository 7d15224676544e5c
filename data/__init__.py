"""The files germinate's defaults name, shipped as package data (`germinate.data`): the default
seed tasks, AIDE's personas and TCIA's constraint library. Runs are written to ./data/runs of the
working directory, never here."""
