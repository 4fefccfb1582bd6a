# shellcheck shell=bash
# The development shell: `source scripts/env.sh` (after `make setup`; the Makefile uses it too).
#
# Activates the venv, sources install/setup.bash, and puts the venv prefix on
# AMENT_PREFIX_PATH: the ROS 2 wheels install their ament index (std_msgs, rcl_interfaces, ...)
# under the venv, and install/setup.bash names only this package's prefix, so without it tools
# that look interfaces up through the index (`ros2 interface show std_msgs/msg/Header`, where
# ros2cli is installed) do not find them.
_vla_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$_vla_root/install/setup.bash" ] || [ ! -f "$_vla_root/.venv/bin/activate" ]; then
  echo "scripts/env.sh: run 'make setup' in $_vla_root first" >&2
else
  # shellcheck disable=SC1091
  source "$_vla_root/.venv/bin/activate"
  # shellcheck disable=SC1091
  source "$_vla_root/install/setup.bash"
  case ":${AMENT_PREFIX_PATH:-}:" in
    *":$VIRTUAL_ENV:"*) ;;
    *) export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$VIRTUAL_ENV" ;;
  esac
fi
unset _vla_root
