#!/usr/bin/env bash
# Runs one statically linked x86-64 Linux program under bochs, whose CPU models
# emulate AVX-512 (qemu 7.2 cannot), and exits with the program's status.
#
#   scripts/bochs/run_static.sh [--cpu tigerlake|corei7_skylake_x] [--work DIR]
#       [--timeout SECONDS] [--env NAME=VALUE]... BINARY [ARGS...]
#
# tigerlake: AVX-512F/BW/VL + VNNI; corei7_skylake_x: AVX-512F/BW/VL, no VNNI.
# The program's stdout+stderr (merged, via the emulated UART) go to stdout; a
# summary line and, on failure, the logs' tails go to stderr. Exit status: the
# program's (128+N if killed by signal N), 124 on timeout, 125 if the guest
# never reported one (kernel panic, bochs error). Defaults: --work build/bochs
# (kernel cached there; one run at a time per work dir and CPU model, so the two
# models can run side by side), --timeout 1500.
# Guest: Debian's cloud kernel (downloaded once into the work dir, never
# installed), an initramfs holding init.c's PID 1 + BINARY, booted by GRUB from
# an ISO. Boot takes ~18 s; user code runs at ~65-70 MIPS (zmm VNNI ~20).
# Tuning knobs (env): BOCHS_IPS, BOCHS_MEGS (guest RAM, 1024), BOCHS_CLOCK,
# KERNEL_ARGS (appended to the kernel command line, e.g. "ignore_loglevel" to
# see the whole boot).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/scripts/bochs
cpu=tigerlake work=$root/build/bochs timeout=1500 envs=()
while (($#)); do
  case $1 in
    --cpu) cpu=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --) shift; break ;;
    -*) echo "run_static.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
(($#)) || { sed -n '5,6p' "$0" >&2; exit 2; }
binary=$(realpath "$1"); shift
case $cpu in tigerlake | corei7_skylake_x) ;; *) echo "run_static.sh: unsupported --cpu $cpu" >&2; exit 2 ;; esac
if readelf -l "$binary" 2>/dev/null | grep -q 'program interpreter'; then
  echo "run_static.sh: warning: $binary is dynamically linked; the guest has no libc" >&2
fi

mkdir -p "$work/kernel"
work=$(realpath "$work")
# Concurrent runs (one per CPU model) share the packages, the cached kernel and init:
# the first one installs, fetches and builds them while the others wait.
exec 9>"$work/kernel.lock"
flock 9
# cdboot.img is what grub-mkrescue needs from grub-pc-bin to make a BIOS-bootable ISO.
missing=()
for t in bochs:bochs /usr/share/bochs/BIOS-bochs-latest:bochsbios /usr/share/vgabios/vgabios.bin:vgabios \
  grub-mkrescue:grub-common /usr/lib/grub/i386-pc/cdboot.img:grub-pc-bin xorriso:xorriso \
  mformat:mtools cpio:cpio gcc:gcc; do
  [[ -e ${t%%:*} ]] || command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
done
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The cloud flavour: LZ4-compressed (XZ decompression of the generic one is
# slow when emulated) and fewer built-in drivers to probe.
kernels=("$work"/kernel/boot/vmlinuz-*)
if [[ ! -e ${kernels[0]} ]]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  [[ -n $pkg ]] || { apt-get update -qq; pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); }
  (cd "$work/kernel" && apt-get download -q "$pkg" >/dev/null 2>&1) \
    || { echo "run_static.sh: apt-get download $pkg failed" >&2; exit 125; }
  dpkg-deb --fsys-tarfile "$work"/kernel/"$pkg"_*.deb | tar -x -C "$work/kernel" --wildcards './boot/vmlinuz-*'
  rm -f "$work"/kernel/*.deb
  kernels=("$work"/kernel/boot/vmlinuz-*)
fi
kernel=${kernels[0]}

if [[ ! -x $work/init || $here/init.c -nt $work/init ]]; then
  gcc -static -O2 -Wall -o "$work/init.tmp" "$here/init.c" && mv "$work/init.tmp" "$work/init"
fi
exec 9>&-

run=$work/run-$cpu
# Measured fastest of 20M..200M (within ~10%); it mainly sets how many
# instructions a guest microsecond is (timer ticks, delays).
ips=${BOCHS_IPS:-100000000}
rm -rf "$run" && mkdir -p "$run/initrd/dev" "$run/iso/boot/grub"
cp "$work/init" "$run/initrd/init"
cp "$binary" "$run/initrd/prog"
: >"$run/initrd/args"
: >"$run/initrd/env"
(($#)) && printf '%s\0' "$@" >"$run/initrd/args"
printf '%s\0' PATH=/ HOME=/tmp TMPDIR=/tmp "${envs[@]}" >"$run/initrd/env"
(cd "$run/initrd" && find . | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$run/iso/boot/initrd"
cp "$kernel" "$run/iso/boot/vmlinuz"
# clearcpuid works around bochs 2.7 CPUID bugs that the 6.1 kernel trips on:
#  321,323 XSAVEC/XSAVES: leaf 0xD.1 reports the standard, not the compacted,
#          size, so the kernel's XSAVE check fails and it turns AVX off entirely;
#  515,516 PKU/OSPKE: leaf 0xD.9 (PKRU) reports size/offset 0, same outcome;
#  580     FSRM: bochs leaves MISC_ENABLE.fast-strings clear, the kernel drops
#          ERMS but keeps FSRM, and its memmove then overruns on short copies
#          (corrupts the page tables at the first printk after "LSM: ...");
#  124     APERFMPERF: unknown MSRs to bochs, read on every tick, each logged.
# Speed: tsc_early_khz makes the kernel's clock (bochs' TSC counts instructions)
# agree with the devices' ips-based one, so delays cost ips-time, not 2.4 GHz
# of instructions; no crypto self-tests (~12 s) or module-signing certs (~2 s).
# No menu, no wait: GRUB runs these commands straight away.
cat >"$run/iso/boot/grub/grub.cfg" <<EOF
linux /boot/vmlinuz console=ttyS0,115200 quiet nokaslr mitigations=off tsc=reliable tsc_early_khz=$((ips / 1000)) cryptomgr.notests initcall_blacklist=load_system_certificate_list clearcpuid=124,321,323,515,516,580 ${KERNEL_ARGS:-}
initrd /boot/initrd
boot
EOF
grub-mkrescue -o "$run/boot.iso" "$run/iso" --install-modules="linux normal iso9660 biosdisk" \
  --locales= --fonts= --themes= >"$run/grub-mkrescue.log" 2>&1

cat >"$run/bochsrc" <<EOF
# ips only converts instruction counts to guest time; clock sync=none lets
# bochs run as fast as it can instead of pacing to the host's clock.
cpu: model=$cpu, count=1, ips=$ips, reset_on_triple_fault=0, ignore_bad_msrs=1
memory: guest=${BOCHS_MEGS:-1024}, host=${BOCHS_MEGS:-1024}
clock: ${BOCHS_CLOCK:-sync=none, time0=local}
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
# Debian's bochs has no "nogui"; rfb (VNC) without waiting for a client is the
# headless choice. It listens on :5900, hence the private netns below.
display_library: rfb, options="timeout=0"
pci: enabled=1, chipset=i440fx
ata0-master: type=cdrom, path=$run/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$run/serial.log
log: $run/bochs.log
# Never stop to ask on the (absent) terminal.
panic: action=fatal
error: action=report
info: action=ignore
debug: action=ignore
speaker: enabled=0
sound: driver=dummy
EOF
# Debian builds bochs with its debugger, which stops at the first instruction
# and reads commands from stdin: continue, and quit if the guest ever stops.
printf 'c\nquit\n' >"$run/debugger.rc"

: >"$run/serial.log"
now() { echo $((${EPOCHREALTIME//[.,]/} / 1000)); }  # ms
t0=$(now)
netns=()
unshare -n true 2>/dev/null && netns=(unshare -n)
"${netns[@]}" bochs -q -f "$run/bochsrc" -rc "$run/debugger.rc" </dev/null >"$run/bochs.out" 2>&1 &
bochs_pid=$!
trap 'kill $bochs_pid 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM  # runs the EXIT trap, so bochs never outlives us
t_start='' t_end='' verdict=''
# Timestamps the markers as they appear on the serial log (0.1 s resolution).
poll() {
  [[ -n $t_start ]] || ! grep -aq '^NIBBLE_BOCHS_START' "$run/serial.log" || t_start=$(now)
  [[ -n $t_end ]] || ! grep -aq '^NIBBLE_BOCHS_EXIT=' "$run/serial.log" || t_end=$(now)
}
while kill -0 $bochs_pid 2>/dev/null; do
  poll
  if [[ -n $t_end ]]; then
    # init powers off via ACPI; give bochs a moment to quit by itself.
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 $bochs_pid 2>/dev/null || break; sleep 0.2; done
    break
  fi
  if grep -aq '\] Kernel panic - not syncing' "$run/serial.log"; then verdict='kernel panic'; sleep 1; break; fi
  if (($(now) - t0 >= timeout * 1000)); then verdict="timeout after ${timeout}s"; break; fi
  sleep 0.1
done
kill $bochs_pid 2>/dev/null || true
wait $bochs_pid 2>/dev/null || true
trap - EXIT
poll

# The program's bytes are those between "START\n" and "\nNIBBLE_BOCHS_" (init
# prints that newline), so the output is reproduced exactly.
awk '/^NIBBLE_BOCHS_(SIGNAL|EXIT)=/ {exit} on {if (n++) printf "\n"; printf "%s", $0} /^NIBBLE_BOCHS_START\r?$/ {on=1}' \
  "$run/serial.log"
code=$(sed -n 's/^NIBBLE_BOCHS_EXIT=\([0-9]*\).*/\1/p' "$run/serial.log" | head -1)
signal=$(sed -n 's/^NIBBLE_BOCHS_SIGNAL=//p' "$run/serial.log" | head -1)
secs() { [[ -n $2 ]] && printf '%d.%01ds' $((($2 - $1) / 1000)) $((($2 - $1) % 1000 / 100)) || echo '?'; }
summary="cpu=$cpu boot=$(secs "$t0" "$t_start") run=$(secs "${t_start:-$t0}" "$t_end")"
if [[ -n $code ]]; then
  echo "run_static.sh: $summary exit=$code${signal:+ (signal $signal)}" >&2
  exit "$code"
fi
echo "run_static.sh: FAILED, no exit status from the guest: ${verdict:-bochs stopped} ($summary)" >&2
echo "--- serial log tail ($run/serial.log) ---" >&2
tail -n 40 "$run/serial.log" >&2
echo "--- bochs log tail ($run/bochs.log) ---" >&2
tail -n 20 "$run/bochs.log" "$run/bochs.out" >&2
[[ $verdict == timeout* ]] && exit 124
exit 125
