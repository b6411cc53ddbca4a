"""pedstream's training cluster: labelling, the student, asynchronous parameter-server training on Ray.

Importing this package keeps Ray on loopback (see ``trainer.cluster``): Ray reads the setting when
it is first imported, so it is set here, before any trainer module imports Ray.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
