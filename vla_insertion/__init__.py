"""vla_insertion: real-time Vision-Language-Action policy for a robot insertion cell."""
# The generated message package (vla_insertion.msg) is installed beside these sources by colcon.
# Extending __path__ lets a checkout's sources and the installed messages form one package, so
# `from vla_insertion.msg import ActionChunk` works even when the source tree is first on sys.path.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
