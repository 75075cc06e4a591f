# The recipes of bench/recipes/run.sh as `--set` overrides, sourced by the bench scripts that train
# under a recipe (bench/recipes/run.sh, bench/experiment.sh, bench/experiment_corpus.sh); what each
# recipe means is written at the top of bench/recipes/run.sh. Needs a `log` function.
# recipe_sets NAME: the recipe's overrides, one per line
recipe_sets() {
  case $1 in
  uniform) ;;
  ntp) echo 'plugin.head_weights=[1.0, 0.0, 0.0, 0.0]' ;;
  weighted) echo 'plugin.head_weights=[1.0, 0.1, 0.08, 0.064]' ;;
  heads-lora) echo 'training.trainable_prefixes=["extra_heads."]' ;;
  heads-full) printf '%s\n' training.use_lora=false 'training.trainable=["heads"]' \
    'training.trainable_prefixes=["extra_heads."]' training.lr=1e-4 ;;
  ntp-heads) printf '%s\n' 'training.trainable=["lora", "heads"]' \
    'training.trainable_prefixes=["*lora_", "extra_heads."]' training.detach_extra_heads=true ;;
  staged) printf '%s\n' 'plugin.head_weights=[1.0, 0.1, 0.08, 0.064]' \
    'stages=[{name = "heads", steps = 50, trainable = ["lora", "heads"], trainable_prefixes = ["extra_heads."], lr = 1e-4}, {name = "joint", steps = 50, trainable = ["lora", "heads"], trainable_prefixes = ["*lora_", "extra_heads."]}]' ;;
  *) log "unknown recipe $1"; return 1 ;;
  esac
}
