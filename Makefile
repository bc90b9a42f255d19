# LSEA Monitor. Every target installs what it needs into $(VENV) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORK ?= work_dirs
# No discovery traffic may leave this machine; each make run gets its own DDS domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
# Idle OpenMP threads yield instead of spinning: on a shared 2-core machine spinning starves the
# other process (the ROS node, the camera publisher) and slows everything down.
export OMP_WAIT_POLICY ?= PASSIVE
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 90 + 10 )))

.PHONY: install test test-fast demo bench colcon clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade -c constraints.txt "pip>=23" setuptools
	$(PY) -m pip install -c constraints.txt -e ".[all]"
	$(PY) -m pip check
	touch $@

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(PY) -m offline_calibration.demo --work-dir $(WORK)/demo

bench: install
	$(PY) bench/run_bench.py --out bench/results.json

colcon: install
	cd ros2_ws && ../$(VENV)/bin/colcon build --base-paths src

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/log
