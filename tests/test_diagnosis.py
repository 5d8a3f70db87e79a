from petal.training.diagnosis import diagnose


def history(loss, val_loss, acc, val_acc):
    return {"loss": loss, "val_loss": val_loss, "accuracy": acc, "val_accuracy": val_acc}


def test_rising_validation_loss_with_falling_training_loss_is_overfitting():
    result = diagnose(history([1.5, 1.0, 0.7, 0.4, 0.2], [1.4, 1.1, 1.0, 1.2, 1.5], [0.4, 0.6, 0.7, 0.85, 0.95], [0.45, 0.6, 0.64, 0.63, 0.62]))
    assert result["status"] == "overfitting"
    assert result["lowest_val_loss_epoch"] == 3
    assert result["verdict"].startswith("overfitting from epoch 4: validation loss rose while training loss fell")
    assert abs(result["train_val_accuracy_gap"] - 0.33) < 1e-9


def test_lowest_validation_loss_at_the_end_means_still_improving():
    result = diagnose(history([1.5, 1.2, 1.0], [1.4, 1.2, 1.1], [0.4, 0.5, 0.6], [0.4, 0.5, 0.55]))
    assert result["status"] == "improving"
    assert "more epochs may help" in result["verdict"]


def test_small_wobble_is_not_called_overfitting():
    result = diagnose(history([1.5, 1.2, 1.0], [1.00, 0.98, 1.01], [0.4, 0.5, 0.6], [0.5, 0.52, 0.51]))
    assert result["status"] == "plateau"


def test_a_head_that_overfitted_is_named_so_though_fine_tuning_ends_with_a_higher_training_loss():
    # a new user's 120 photos: head epochs 1-4 on embeddings, lowest validation loss at 2, then two fine-tuning
    # epochs on augmented images, whose training loss is above the head's
    result = diagnose(history([0.60, 0.37, 0.33, 0.32, 0.45, 0.44], [0.50, 0.43, 0.46, 0.48, 0.52, 0.52],
                              [0.80, 0.90, 0.92, 0.93, 0.85, 0.86], [0.85, 0.90, 0.90, 0.89, 0.88, 0.88]))
    assert result["status"] == "overfitting"
    assert result["verdict"].startswith("overfitting from epoch 3: validation loss rose while training loss fell")


def test_validation_and_training_loss_rising_together_is_a_run_that_got_worse_not_a_plateau():
    # a head at 0.62 val accuracy, then one short fine-tuning epoch that undid it (a new user's 200 photos)
    result = diagnose(history([1.20, 1.05, 1.55], [1.20, 1.157, 1.521], [0.55, 0.675, 0.30], [0.58, 0.625, 0.325]))
    assert result["status"] == "worse"
    assert result["verdict"].startswith("got worse from epoch 3: validation loss rose and training loss did not fall")
    assert "within" not in result["verdict"]
