"""Old home of the renderer; it now lives in `vla_insertion.core.sim.render`."""
from vla_insertion.core.sim.render import PinholeCamera, SceneRenderer, view_cameras  # noqa: F401
