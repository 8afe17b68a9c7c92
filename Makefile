# DynaGuide stack — everything runs from a virtual environment in .venv (no system ROS needed).
#   make demo     set up (first time) and run the main job (DEMO_ARGS=--view: watch it in rerun): the CALVIN sim graph, headless, guided and unguided (outputs/demo/demo.png)
#   make test     set up (first time), lint (ruff, config in pyproject.toml) and run the default test suite
#   make lint     only the lint step
#   make install  only set up
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: install demo lint test test-slow bench clean FORCE

install: $(STAMP)

# The editable install maps every module to its file when it runs: a module added, moved or removed since (e.g. a
# pull that splits one) needs the install again, so the list of modules is a prerequisite (rewritten only on change).
LAYOUT := $(VENV)/.module-layout
PACKAGES := dynaguide calvin_bridge dynaguide_experiments dynaguide_ros dynaguide_cli arx5_driver

$(LAYOUT): FORCE
	@mkdir -p $(VENV)
	@find $(PACKAGES) -name '*.py' -not -path '*/__pycache__/*' | LC_ALL=C sort > $@.new
	@cmp -s $@.new $@ && rm -f $@.new || mv $@.new $@

FORCE:

$(STAMP): pyproject.toml dynaguide_msgs/CMakeLists.txt $(wildcard dynaguide_msgs/msg/*.msg dynaguide_msgs/srv/*.srv) $(LAYOUT)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# build requirements of dynaguide_msgs (ROS 2 build tools from PyPI), read from pyproject.toml
	$(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['build-system']['requires']))" > $(VENV)/build-requirements.txt
	$(PY) -m pip install -q -r $(VENV)/build-requirements.txt
	$(PY) -m pip install -q --no-build-isolation -e '.[test,lerobot,distributed]'
	@# LeRobot's code without its pins (torch<2.11, ...): its diffusion policy's imports are the `lerobot` extra
	$(PY) -m pip install -q --no-deps lerobot==0.4.4
	$(PY) -c "import rclpy, dynaguide_msgs.msg, dynaguide, torch, pybullet; print('dynaguide stack installed')"
	$(PY) -c "from dynaguide.policy.lerobot_adapter import import_lerobot; print('lerobot', import_lerobot())"
	@touch $(STAMP)

demo: install
	$(VENV)/bin/dynaguide demo $(DEMO_ARGS)

lint: install
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/dynaguide bench guidance --json results/bench_guidance.json

clean:
	rm -rf build $(VENV)
