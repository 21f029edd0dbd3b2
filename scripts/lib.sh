# Small helpers shared by the project's scripts: named stages with their durations.
_stage_name=""
_stage_start=0
stage() {
  _stage_name="$1"
  _stage_start=$(date +%s)
  echo "==> $1"
}
done_stage() {
  echo "<== $_stage_name: $(( $(date +%s) - _stage_start )) s"
}
