"""Suite-wide collection rules.

`make test` has a budget of 15 minutes on 2 cores. The tests listed here each took more
than about 6 s (most of it XLA compilation) in a timed run of the whole suite
(`pytest -m "not slow" --durations=60`, 2026-12-02); they are marked slow here, so
`make test` skips them and `make test-slow` (run by CI after `make test`) runs them. A
test that gets faster can leave the list; a new long test gets `@pytest.mark.slow` in
its own module.
"""

import pytest

SLOW_BY_MEASURED_TIME = frozenset({
    "tests/benchmarks/test_aggregation_benchmark.py::test_stream_case_rates_and_ratio",
    "tests/models/test_lora.py::test_init_b_is_zero_and_a_is_not",
    "tests/train/test_train_step.py::test_lora_microbatches_accumulate_only_the_adapters",
    "tests/train/test_train_step.py::test_two_microbatches_equal_one_full_batch",
    "tests/benchmarks/test_generate_benchmark.py::test_lines_follow_from_the_round_times",
    "tests/benchmarks/test_generate_benchmark.py::test_recompute_decoder_draws_what_generate_draws",
    "tests/benchmarks/test_train_step_benchmark.py::test_table_rows_follow_from_the_step_times",
    "tests/experiments/test_pipeline_rerun.py::test_another_config_is_refused_before_any_work_and_force_new_reruns",
    "tests/experiments/test_pipeline_rerun.py::test_run_script_reports_setting_and_workdir_mistakes_in_one_line",
    "tests/feedback/metrics/test_drift.py::test_change_points_separate_drift_from_always_bad_on_simulated_populations",
    "tests/feedback/workflow/test_pipeline.py::test_voting_methods_route_on_their_vote_share[majority_vote]",
    "tests/feedback/workflow/test_stream.py::test_dawid_skene_stream_equals_all_at_once",
    "tests/feedback/workflow/test_stream.py::test_follow_killed_and_restarted_loses_and_double_counts_nothing",
    "tests/feedback/workflow/test_stream.py::test_one_coin_stream_equals_all_at_once",
    "tests/feedback/workflow/test_workflow_plan.py::test_report_breaks_down_by_guideline_version",
    "tests/models/test_generate.py::test_greedy_with_the_cache_equals_recomputing_the_prefix",
    "tests/models/test_generate.py::test_logprobs_equal_the_teacher_forced_pass_and_numpy[truncated]",
    "tests/models/test_layers.py::test_causal_attention_matches_numpy_and_xla[4-4-4]",
    "tests/models/test_transformer.py::test_logit_slots_equal_the_full_forward_at_those_slots[gqa_remat]",
    "tests/models/test_transformer.py::test_logit_slots_equal_the_full_forward_at_those_slots[plain]",
    "tests/models/test_transformer.py::test_logit_slots_equal_the_full_forward_at_those_slots[scan]",
    "tests/rl/test_loop.py::test_a_stopped_run_resumes_bit_for_bit",
    "tests/rl/test_loop.py::test_command_line_runs_an_online_objective",
    "tests/rl/test_loop.py::test_each_objective_raises_the_toy_reward[grpo]",
    "tests/rl/test_loop.py::test_each_objective_raises_the_toy_reward[online_dpo]",
    "tests/rl/test_loop.py::test_each_objective_raises_the_toy_reward[ppo]",
    "tests/rl/test_loop.py::test_each_objective_raises_the_toy_reward[rloo]",
    "tests/rl/test_loop.py::test_ppo_against_a_reward_model_scores_what_the_checkpoint_scores",
    "tests/rl/test_rewards.py::test_reward_model_source_equals_the_checkpoint_evaluated_directly",
    "tests/rl/test_rollout.py::test_ppo_rollout_matches_independent_forwards",
    "tests/rl/test_update.py::test_rollout_log_probs_and_values_against_full_forward_passes",
    "tests/rl/test_update.py::test_update_is_epochs_of_shuffled_minibatches_of_the_train_step",
    "tests/test_host_memory.py::test_xla_executions_stop_faulting_their_temporaries",
    "tests/train/objectives/test_ppo.py::test_microbatches_give_the_minibatch_gradient",
    "tests/train/test_export.py::test_reward_model_export_drops_the_bias_explicitly",
    "tests/train/test_networks.py::test_ensemble_members_are_independent_reward_models",
    "tests/train/test_padding_free.py::test_attention_mask_inside_documents_hides_keys_in_every_block",
    "tests/train/test_padding_free.py::test_packed_log_probs_and_gradients_equal_the_two_row_layout[False]",
    "tests/train/test_padding_free.py::test_packed_rewards_equal_the_two_row_rewards[1-2]",
    "tests/train/test_padding_free.py::test_packed_rewards_equal_the_two_row_rewards[2-1]",
    "tests/train/test_padding_free.py::test_packed_sequence_log_probs_and_gradients_equal_the_padded_rows",
    "tests/train/test_padding_free.py::test_trainer_padding_free_matches_the_two_row_run[dpo-cached-metrics0]",
    "tests/train/test_padding_free.py::test_trainer_padding_free_matches_the_two_row_run[reward_model-cached-metrics2]",
    "tests/train/test_padding_free.py::test_trainer_padding_free_matches_the_two_row_run[sft-cached-metrics3]",
    "tests/train/test_pretrained.py::test_lora_dpo_changes_only_adapters_and_checkpoints_only_them",
    "tests/train/test_pretrained.py::test_lora_on_an_sft_run_and_its_checkpoint_read_back",
    "tests/train/test_pretrained.py::test_lora_reference_is_the_base_model",
    "tests/train/test_sampling.py::test_sharded_sampler_equals_one_device",
    "tests/train/test_score.py::test_script_prints_accuracy_and_fails_cleanly",
    "tests/train/test_shared_prompt.py::test_a_rejected_token_never_sees_the_chosen_completion",
    "tests/train/test_shared_prompt.py::test_shared_log_probs_and_gradients_equal_the_two_row_layout[False]",
    "tests/train/test_shared_prompt.py::test_shared_log_probs_and_gradients_equal_the_two_row_layout[True]",
    "tests/train/test_shared_prompt.py::test_shared_rewards_equal_the_two_row_rewards[1-2]",
    "tests/train/test_shared_prompt.py::test_shared_rewards_equal_the_two_row_rewards[2-1]",
    "tests/train/test_shared_prompt.py::test_trainer_with_shared_prompt_matches_the_two_row_run[dpo-metrics0]",
    "tests/train/test_shared_prompt.py::test_trainer_with_shared_prompt_matches_the_two_row_run[reward_model-metrics1]",
    "tests/train/test_train_loop.py::test_dpo_drives_implicit_reward_accuracy_to_one",
    "tests/train/test_train_loop.py::test_reward_model_learns_the_planted_rule",
    "tests/train/test_train_sharded.py::test_sharded_steps_equal_unsharded",
})


def pytest_collection_modifyitems(config, items):
  del config  # unused: the marks come from the list above
  for item in items:
    if item.nodeid in SLOW_BY_MEASURED_TIME:
      item.add_marker(pytest.mark.slow)
