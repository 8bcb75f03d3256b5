#!/usr/bin/env python3
"""tests/gpu/sanitizer_summary.py LOG — the verdict of a compute-sanitizer log (tests/gpu/run.sh).

Counts errors from the summary lines' NUMBERS, never from the presence of a word (the line
"========= ERROR SUMMARY: 0 errors" of a clean run contains "error"). Every process the tool
follows (--target-processes all: the test harness forks one child per test) prints its own:
  memcheck:  "========= ERROR SUMMARY: N error(s)"
  racecheck: "========= RACECHECK SUMMARY: N hazard(s) displayed (E error(s), W warning(s))"
Also reads the test binary's own closing line ("<bin>: P passed, F failed, S skipped").

Hazards inside cuBLAS's own kernels are counted apart, not against peftd: racecheck reports a
record per hazard site, "Race reported between <Read|Write> access at KERNEL+0xOFF / and ... at
KERNEL+0xOFF [N hazards]", and on an H200 (2026-12-04) every record it printed was between two
offsets of one cuBLAS Hopper GEMM kernel (nvjet_sm90_*, closed source; the same sites whatever
the arguments). A record whose both sites are in such a kernel is subtracted from the summary's
errors/warnings and reported as "V vendor records"; a record touching any other kernel counts.
(Leaving cuBLAS's kernels out with --kernel-name-exclude was tried: the sanitizer then failed
on a hardware exception in them, so they stay instrumented and are attributed here.)

Prints one line: "<errors> errors, <warnings> warnings in <k> process summaries; tests: ..." and
exits 0 when clean (no errors, no warnings, at least one summary, every test passed and none
skipped), 1 when the sanitizer or a test found something, 2 when the log has no summary."""
import re
import sys

ERR = re.compile(r"^=+ ERROR SUMMARY: (\d+) errors?\b", re.M)
RACE = re.compile(r"^=+ RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", re.M)
TESTS = re.compile(r"^\S+: (\d+) passed, (\d+) failed, (\d+) skipped$", re.M)
RECORD = re.compile(r"^=+ (Error|Warning): Race reported between \w+ access at (\S+?)\+0x[0-9a-f]+\s*\n"
                    r"=+\s+and \w+ access at (\S+?)\+0x[0-9a-f]+", re.M)
# cuBLAS's kernels (Hopper: nvjet_*; older GPUs: *_xmma_gemm_*, cutlass_* inside libcublasLt)
VENDOR = re.compile(r"^(nvjet_|cublas|cutlass|sm\d+_xmma_)")


def verdict(text):
    """(exit code, line) for a sanitizer log's text."""
    errors = warnings = summaries = 0
    for m in ERR.finditer(text):
        errors += int(m.group(1))
        summaries += 1
    for m in RACE.finditer(text):
        errors += int(m.group(2))
        warnings += int(m.group(3))
        summaries += 1
    vendor = []
    for m in RECORD.finditer(text):
        if VENDOR.match(m.group(2)) and VENDOR.match(m.group(3)):
            vendor.append(m.group(2))
            if m.group(1) == "Error":
                errors -= 1
            else:
                warnings -= 1
    t = TESTS.findall(text)
    tests = "tests: %s passed, %s failed, %s skipped" % t[-1] if t else "tests: no summary line"
    line = "%d errors, %d warnings in %d process summaries" % (errors, warnings, summaries)
    if vendor:
        line += " (+%d vendor records inside cuBLAS's own kernels, not counted: %s)" % (
            len(vendor), ", ".join(sorted(set(vendor))))
    line += "; " + tests
    if summaries == 0:
        return 2, "no sanitizer summary line (crashed or timed out?); " + tests
    tests_ok = bool(t) and int(t[-1][0]) > 0 and t[-1][1] == "0" and t[-1][2] == "0"
    return (0 if errors == 0 and warnings == 0 and tests_ok else 1), line


def main():
    try:
        with open(sys.argv[1], errors="replace") as f:
            text = f.read()
    except (IndexError, OSError) as e:
        print("cannot read the sanitizer log: %s" % e)
        return 2
    code, line = verdict(text)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
