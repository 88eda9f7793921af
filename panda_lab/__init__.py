"""panda-lab: PanDA's workload management, brought into the notebook.

What users import lives here; everything else is internal and may change.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("panda-lab")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

from panda_lab.client.executor import EnvironmentMismatch, PandaExecutor
from panda_lab.client.futures import JobFailed, JobKilled, RemoteTraceback
from panda_lab.client.session import Lab, connect
from panda_lab.client.tasks import TaskHandle
from panda_lab.payload import PayloadError

__all__ = [
    "EnvironmentMismatch",
    "JobFailed",
    "JobKilled",
    "Lab",
    "PandaExecutor",
    "PayloadError",
    "RemoteTraceback",
    "TaskHandle",
    "__version__",
    "connect",
]
