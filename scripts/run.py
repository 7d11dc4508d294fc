"""The main job behind `make run` (today: the objectives demonstration)."""

from rlhf_jax import demo

if __name__ == "__main__":
  demo.main()
