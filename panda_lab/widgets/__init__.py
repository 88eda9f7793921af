"""The live monitor widgets of a task or of all tasks (ipywidgets), and the snapshot of a
task they draw from.

They sit below the client: they reach the server through any object with the
:class:`~panda_lab.widgets.snapshot.LabView` shape (``panda_lab.client.Lab`` is one), so
``lab.monitor()`` and a task's notebook display use them without an import cycle.
"""
