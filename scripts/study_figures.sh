#!/usr/bin/env sh
# Tables and figures of the published studies (docs/results/), from their results folders.
# Run the studies first (each resumes where it stopped):
#   for s in variability variability-keys faults adc fp-vs-binary endurance drift read-noise ir-drop adc-calibrated conv-rows energy hardware-aware; do
#     batmann study run studies/$s.toml --out runs/$s --workers 2; done
set -eu
cd "$(dirname "$0")/.."
B=${BATMANN:-.venv/bin/batmann}
R=${RUNS:-runs}
O=docs/results
mkdir -p "$O"
for s in variability variability-keys faults adc fp-vs-binary endurance drift read-noise ir-drop adc-calibrated conv-rows energy hardware-aware; do
  $B study export "$R/$s" --level config --out "$O/$s.csv"
  $B study export "$R/$s" --level cell --out "$O/$s-cells.csv"
done
$B study plot "$R/variability" --x variability --hue preset --col analog --out "$O/variability.png"
$B study plot "$R/variability-keys" --x variability --hue preset --metric difference --out "$O/variability-keys.png"
$B study plot "$R/faults" --x stuck_lrs --y states --out "$O/faults.png"
$B study plot "$R/adc" --x adc_bits --hue tile_shape --out "$O/adc.png"
$B study plot "$R/fp-vs-binary" --x variability --hue checkpoint --metric difference --out "$O/fp-vs-binary.png"
$B study plot "$R/endurance" --x episodes_served --out "$O/endurance.png"
$B study plot "$R/drift" --x time --hue drift_compensation --out "$O/drift.png"
$B study plot "$R/read-noise" --x read_noise --out "$O/read-noise.png"
$B study plot "$R/ir-drop" --x wire_resistance --hue tile_shape --out "$O/ir-drop.png"
$B study plot "$R/adc-calibrated" --x adc_bits --hue adc_range --out "$O/adc-calibrated.png"
$B study plot "$R/conv-rows" --x adc_bits --hue conv_rows --out "$O/conv-rows.png"
$B study plot "$R/energy" --x energy_pj_per_query --hue tile_shape --out "$O/energy.png"
$B study plot "$R/hardware-aware" --x checkpoint --metric difference --out "$O/hardware-aware.png"
