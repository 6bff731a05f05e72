#pragma once
// ROME's hyper-parameters (names as in the paper's hparams files). Defaults are the paper's
// GPT-2-XL settings; configs/ holds those of GPT-J-6B and Llama-2-7B.
#include <cstdint>
#include <string>

namespace rc {

struct RomeHparams {
  int64_t layer = 17;
  int64_t v_loss_layer = 47;
  int64_t v_num_grad_steps = 20;
  double v_lr = 0.5;
  double v_weight_decay = 0.5;
  double clamp_norm_factor = 4.0;
  double kl_factor = 0.0625;
  bool mom2_adjustment = false;
  std::string stats;            // second-moment .npz (ROME's published layout)
  double mom2_ridge = 0.0;      // C + ridge * mean(diag C) * I before solving
  std::string kl_prompt = "{} is a";
  double early_stop_loss = 5e-2;

  template <class Visit>
  void visit_fields(Visit&& visit) {
    visit("layer", layer, "edited layer L; W is its MLP output projection");
    visit("v_loss_layer", v_loss_layer, "layer whose output feeds the NLL of the v* optimisation (the last layer)");
    visit("v_num_grad_steps", v_num_grad_steps, "optimisation iterations (the last takes no step)");
    visit("v_lr", v_lr, "Adam learning rate for delta");
    visit("v_weight_decay", v_weight_decay, "weight of ||delta|| / ||target_init||^2 in the loss");
    visit("clamp_norm_factor", clamp_norm_factor, "||delta|| is clipped to this times ||target_init||");
    visit("kl_factor", kl_factor, "weight of KL(P_now || P_init) at the KL prompt");
    visit("mom2_adjustment", mom2_adjustment, "left vector C^-1 k (true) or k (false, the paper's configs)");
    visit("stats", stats, "second-moment .npz (mom2.mom2, mom2.count), used when mom2_adjustment is true");
    visit("mom2_ridge", mom2_ridge, "ridge added to C, relative to its mean diagonal (0: none)");
    visit("kl_prompt", kl_prompt, "prompt of the KL term, \"{}\" is the subject");
    visit("early_stop_loss", early_stop_loss, "optimisation stops once the loss is below this");
  }
};

}  // namespace rc
