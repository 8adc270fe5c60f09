# systemd-free appliance image builder. `make help` lists the targets.
#
# Variables: CORE=path (your program), PROFILE=default|debug, KERNEL=debian|appliance
# (Debian's kernel, or our own with every driver built in), MIRROR=url (Debian
# mirror; default: the host's own), CACHE_DIR (mkosi's package cache and incremental
# image, kept outside the clone), VERSION (the image's; default: date and build id),
# HOSTNAME (the machine's host name, given on make's command line: the shell's own
# HOSTNAME is ignored; default: appliance), TIMEOUT_MULTIPLIER (QEMU tests), QEMU_ACCEL=kvm|tcg.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD ?= build
CACHE_DIR ?= $(HOME)/.cache/appliance-image
PROFILE ?= default
ESP_FREE_MIB ?= 64
CORE ?=
HOSTNAME_ARG := $(if $(filter command line,$(origin HOSTNAME)),--hostname '$(HOSTNAME)',)
export CORE KERNEL PACKAGES DATA_SIZE UPDATE_CHANNEL UPDATE_INTERVAL UPDATE_CA CHANNEL_KEYS NETWORK NETWORK_WAIT NTP SYSLOG CRASH_REPORTS CRASH_REPORTS_CA MIRROR SECURITY_MIRROR SECURE_BOOT KEYS_DIR SB_KEY SB_CERT SIGN_DEBUG_WITH_THIS_KEY VERSION

HOST_STAMP := $(BUILD)/.host-ready
VENV_STAMP := $(VENV)/.ready

.PHONY: help deps image kernel test-image qemu flash update publish dumps data test lint unit qemu-test fuzz soak size bench bench-build clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(HOST_STAMP): scripts/setup-host
	scripts/setup-host
	@mkdir -p $(BUILD) && touch $@

$(VENV_STAMP): python/pyproject.toml | $(HOST_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e 'python[dev]'
	@touch $@

# The real servers the tests start: an error tracker for crash reports and the bench
# (Bugsink, appliance.harness.bugsink) in a venv of its own (its Django must not meet the
# harness's packages), a time server, a syslog receiver and a DHCP server (Debian's chronyd,
# rsyslogd and dnsmasq, unpacked there: installed, they would become this machine's daemons).
TRACKER_VENV ?= .venv-tracker
TRACKER_STAMP := $(TRACKER_VENV)/.ready
export TRACKER_VENV
$(TRACKER_STAMP): scripts/unpack-debs | $(HOST_STAMP)
	$(PYTHON) -m venv $(TRACKER_VENV)
	$(TRACKER_VENV)/bin/python -m pip install --quiet 'bugsink==2.6.2'
	scripts/unpack-debs $(abspath $(TRACKER_VENV))/chrony chrony
	scripts/unpack-debs $(abspath $(TRACKER_VENV))/rsyslog rsyslog libestr0 libfastjson4
	scripts/unpack-debs $(abspath $(TRACKER_VENV))/dnsmasq dnsmasq-base libnetfilter-conntrack3 libnftables1 \
		libnfnetlink0 libnftnl11 libjansson4 libmnl0 libxtables12
	@touch $@

deps: $(HOST_STAMP) $(VENV_STAMP) $(TRACKER_STAMP) ## install what building and testing need (apt, venvs)

image: deps ## build build/appliance.raw (and .efi, .bmap); CORE=, PROFILE=debug
	$(PY) -m appliance.builder image --build-dir $(BUILD) --cache-dir $(CACHE_DIR) --profile $(PROFILE) \
		--esp-free-mib $(ESP_FREE_MIB) $(HOSTNAME_ARG)

kernel: deps ## build the appliance kernel alone into the cache (KERNEL=appliance uses it; the first build takes about 12 minutes on two cores)
	$(PY) -m appliance.builder kernel --build-dir $(BUILD) --cache-dir $(CACHE_DIR)

# The test image boots the UKI directly (SECURE_BOOT=off): shim costs its many boots about 4 s
# each under TCG; the shipped layout is tested on the demo image and in test_qemu_secureboot.py.
test-image: deps ## build build/test/appliance.raw with the crash-matrix test core (and build/test-v2, an update to it; build/test-debug, PROFILE=debug; build/test-kernel, KERNEL=appliance; build/test-net, NETWORK=dhcp with a test update channel, and its v2 and v3)
	$(PY) -m appliance.builder image --build-dir $(BUILD)/test --cache-dir $(CACHE_DIR) \
		--core tests/cores/matrix --core-memory-max 256M --history-records 4 --hw-watchdog-seconds 15 \
		--secure-boot off --kernel debian --hostname matrix
	$(PY) -m appliance.builder image --build-dir $(BUILD)/test-v2 --cache-dir $(CACHE_DIR) \
		--core tests/cores/matrix --core-memory-max 256M --history-records 4 --hw-watchdog-seconds 15 \
		--secure-boot off --kernel debian --image-version test-v2 --hostname matrix
	$(PY) -m appliance.builder image --build-dir $(BUILD)/test-debug --cache-dir $(CACHE_DIR) --profile debug \
		--core tests/cores/matrix --core-memory-max 256M --history-records 4 --hw-watchdog-seconds 15 \
		--secure-boot off --kernel debian --hostname matrix
	$(PY) -m appliance.builder image --build-dir $(BUILD)/test-kernel --cache-dir $(CACHE_DIR) --kernel appliance \
		--core tests/cores/matrix --core-memory-max 256M --history-records 4 --hw-watchdog-seconds 15 \
		--secure-boot off --hostname matrix
	scripts/test-channel-ca $(BUILD)/test-channel
	for v in 1 2 3; do \
		$(PY) -m appliance.builder image --build-dir $(BUILD)/test-net$$( [ $$v = 1 ] || echo -v$$v ) --cache-dir $(CACHE_DIR) \
			--core tests/cores/matrix --core-memory-max 256M --history-records 4 --hw-watchdog-seconds 15 \
			--secure-boot off --kernel debian --hostname matrix --network dhcp --syslog 10.0.2.101:514 --esp-free-mib 112 \
			--image-version net-$$v --update-channel http://10.0.2.102:8080/ --update-interval 8 \
			--update-ca $(BUILD)/test-channel/ca.pem --channel-keys $(BUILD)/test-channel/keys; \
	done

size: deps ## print the UKI's size breakdown (kernel, initrd, largest directories)
	$(PY) -m appliance.builder size $(BUILD)/appliance.efi

qemu: deps ## boot build/appliance.raw in QEMU/OVMF on this terminal (Ctrl-a x quits); SCREEN=1: a monitor too, in a window
	$(PY) -m appliance.tools.qemu $(BUILD)/appliance.raw $(if $(filter 1 yes true,$(SCREEN)),--screen)

IMAGE ?= $(BUILD)/appliance.raw
flash: deps ## write the image to a USB stick: DEV=/dev/sdX [YES=1] [ALLOW_NON_REMOVABLE=sdX] [IMAGE=]
	@test -n "$(DEV)" || { echo "make flash: name the stick: make flash DEV=/dev/sdX (lsblk lists disks)"; exit 2; }
	$(PY) -m appliance.media.flash "$(DEV)" --image "$(IMAGE)" $(if $(filter 1 yes true,$(YES)),--yes) \
		$(if $(ALLOW_NON_REMOVABLE),--allow-non-removable "$(ALLOW_NON_REMOVABLE)")

update: deps ## stage the image make image built onto a stick or image, keeping its history: DEV=/dev/sdX or IMG=path [TRIES=3]
	@test -n "$(DEV)$(IMG)" || { echo "make update: say where to: make update DEV=/dev/sdX or IMG=path"; exit 2; }
	$(PY) -m appliance.media.update "$(or $(DEV),$(IMG))" --image $(BUILD)/appliance.efi $(if $(TRIES),--tries $(TRIES)) \
		$(if $(ALLOW_NON_REMOVABLE),--allow-non-removable "$(ALLOW_NON_REMOVABLE)")

publish: deps ## add the image make image built to an update channel: CHANNEL=dir [ROLLOUT=percent] [PAUSE=1] [REFRESH=1] [ROTATE=role] [SHOW=1]
	@test -n "$(CHANNEL)" || { echo "make publish: name the channel's directory: make publish CHANNEL=dir"; exit 2; }
	$(PY) -m appliance.channel.publish "$(CHANNEL)" --image $(BUILD)/appliance.efi $(if $(ROLLOUT),--rollout "$(ROLLOUT)") \
		$(if $(filter 1 yes true,$(PAUSE)),--pause) $(if $(filter 1 yes true,$(REFRESH)),--refresh) \
		$(if $(ROTATE),--rotate "$(ROTATE)") $(if $(filter 1 yes true,$(SHOW)),--show) \
		$(if $(TIMESTAMP_EXPIRES),--timestamp-expires "$(TIMESTAMP_EXPIRES)")

dumps: deps ## crash dumps off a stick or image: DEV=/dev/sdX or IMG=path [SHOW=N|all|runtime] [SAVE=dir] [CLEAR=1] [SEND=dsn]
	@test -n "$(DEV)$(IMG)" || { echo "make dumps: say where from: make dumps DEV=/dev/sdX or IMG=path"; exit 2; }
	$(PY) -m appliance.media.dumps "$(or $(DEV),$(IMG))" $(if $(SHOW),--show "$(SHOW)") $(if $(SAVE),--save "$(SAVE)") \
		$(if $(filter 1 yes true,$(CLEAR)),--clear) $(if $(filter 1 yes true,$(YES)),--yes) \
		$(if $(SEND),--send "$(SEND)") $(if $(SEND_CA),--send-ca "$(SEND_CA)")

data: deps ## the data partition's files off a stick or image, read-only: DEV=/dev/sdX or IMG=path [SAVE=dir]
	@test -n "$(DEV)$(IMG)" || { echo "make data: say where from: make data DEV=/dev/sdX or IMG=path"; exit 2; }
	$(PY) -m appliance.media.data "$(or $(DEV),$(IMG))" $(if $(SAVE),--save "$(SAVE)")

lint: deps ## ruff and mypy
	$(VENV)/bin/ruff check python tests initramfs/init initramfs/launch-core mkosi.finalize mkosi.prepare.chroot mkosi.postinst.chroot
	$(VENV)/bin/mypy

unit: deps ## the fast tests (no image, no QEMU)
	$(PY) -m pytest -m 'not image and not qemu' tests

qemu-test: deps image test-image ## the QEMU tests (boot the image, crash it, check the dumps)
	$(PY) -m pytest -n 2 --dist worksteal -m 'image or qemu' tests

test: deps lint image test-image ## everything: lint, unit tests, image tests, QEMU tests
	$(PY) -m pytest -n 2 --dist worksteal tests

FUZZ_EXAMPLES ?= 20000
fuzz: deps ## the parsers of untrusted bytes against many random inputs [FUZZ_EXAMPLES=20000]
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -m fuzz tests

soak: deps test-image ## power cuts at random moments of many boots, the ESP checked after each [SOAK_CUTS=1000] [SOAK_DATA=1: the data partition's]
	$(PY) -m appliance.tools.soak --image $(BUILD)/test/appliance.raw $(if $(filter 1 yes true,$(SOAK_DATA)),--data --out $(BUILD)/soak-data,--out $(BUILD)/soak) \
		$(if $(SOAK_CUTS),--cuts $(SOAK_CUTS))

bench: deps ## ours vs a systemd image: sizes, builds, boots, crash turnaround, both kernels [BENCH_BOOTS=5] [BENCH_COLD=1]; crash reports: python -m appliance.bench --only-reports; kernels alone: --only-kernels
	$(PY) -m appliance.bench --build-dir $(BUILD) --cache-dir $(CACHE_DIR) $(if $(filter 1 yes true,$(BENCH_COLD)),--cold)

bench-build: deps ## time a rebuild after a change to one file under python/ (prints seconds)
	$(PY) -m appliance.builder bench-rebuild --build-dir $(BUILD) --cache-dir $(CACHE_DIR)

clean: ## remove build outputs (keeps the package cache and incremental image)
	rm -rf $(BUILD)

distclean: clean ## also remove the venv and mkosi's caches
	rm -rf $(VENV) $(TRACKER_VENV) $(CACHE_DIR)
