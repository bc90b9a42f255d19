"""ament_python package ``lsea_monitor``: the node executable, launch files and parameter files.

It holds no Python package of its own: ``lsea_monitor_node`` runs ``lsea_monitor.node:main`` from
the ``lsea-monitor`` distribution, which the vehicle pip-installs from the repository root before
``colcon build``. ``launch`` and ``config`` are symlinks to the repository's folders; setuptools
copies the files they point to (``colcon build --symlink-install`` links them instead).
"""

from glob import glob

from setuptools import setup

package_name = "lsea_monitor"
# The distribution name differs from the ROS package name on purpose: "lsea_monitor" would
# normalise to "lsea-monitor", the pip distribution that holds the code, and the two would shadow
# each other in importlib.metadata once the workspace is sourced.
dist_name = "lsea_monitor_ros"

setup(
    name=dist_name,
    version="0.1.0",
    packages=[],
    py_modules=[],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", sorted(glob("launch/*.launch.py") + glob("launch/*.launch.xml"))),
        (f"share/{package_name}/config", sorted(glob("config/*.yaml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="LSEA Monitor maintainers",
    maintainer_email="maintainers@lsea-monitor.invalid",
    description="LSEA Monitor ROS 2 node, launch and parameter files (code from the lsea-monitor distribution).",
    license="MIT",
    entry_points={"console_scripts": ["lsea_monitor_node = lsea_monitor.node:main"]},
)
