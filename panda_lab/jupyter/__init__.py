"""The notebook side: ``%%panda`` cells as jobs and live monitoring widgets.

IPython and ipywidgets are imported only here (the ``notebook`` extra), never by the
server or a pilot, which run the cell code through :mod:`panda_lab.jupyter.cells`.
"""
