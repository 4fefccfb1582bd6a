"""Pip install of the ROS-free part (core and tools) for machines without ROS.

On a ROS machine, colcon builds this package with ament_cmake (CMakeLists.txt) instead.
"""
from setuptools import setup

setup()
