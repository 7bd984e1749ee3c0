//! Authentication through the async-nats client: token, single user, users list with plain and
//! bcrypt passwords.

use crate::common::{opts, start};
use natrium::options::User;

async fn connects(url: &str, o: async_nats::ConnectOptions) -> bool {
    match o.connect(url).await {
        Ok(c) => c.flush().await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn token_auth() {
    let mut o = opts();
    o.auth.token = Some("s3cr3t".into());
    let s = start(o).await;
    let url = s.client_url();
    assert!(
        connects(
            &url,
            async_nats::ConnectOptions::with_token("s3cr3t".into())
        )
        .await
    );
    assert!(!connects(&url, async_nats::ConnectOptions::with_token("wrong".into())).await);
    assert!(!connects(&url, async_nats::ConnectOptions::new()).await);
    s.shutdown().await;
}

#[tokio::test]
async fn user_password_auth() {
    let mut o = opts();
    o.auth.user = Some("alice".into());
    o.auth.password = Some("pw".into());
    let s = start(o).await;
    let url = s.client_url();
    assert!(
        connects(
            &url,
            async_nats::ConnectOptions::with_user_and_password("alice".into(), "pw".into())
        )
        .await
    );
    assert!(
        !connects(
            &url,
            async_nats::ConnectOptions::with_user_and_password("alice".into(), "x".into())
        )
        .await
    );
    assert!(
        !connects(
            &url,
            async_nats::ConnectOptions::with_user_and_password("bob".into(), "pw".into())
        )
        .await
    );
    s.shutdown().await;
}

#[tokio::test]
async fn users_list_with_bcrypt() {
    let mut o = opts();
    o.auth.users = vec![
        User {
            user: "plain".into(),
            password: "p1".into(),
            ..User::default()
        },
        User {
            user: "hashed".into(),
            password: bcrypt::hash("p2", 4).expect("hash"),
            ..User::default()
        },
    ];
    let s = start(o).await;
    let url = s.client_url();
    let up =
        |u: &str, p: &str| async_nats::ConnectOptions::with_user_and_password(u.into(), p.into());
    assert!(connects(&url, up("plain", "p1")).await);
    assert!(connects(&url, up("hashed", "p2")).await);
    assert!(!connects(&url, up("hashed", "p1")).await);
    assert!(!connects(&url, up("nobody", "p1")).await);
    let err = async_nats::ConnectOptions::with_user_and_password("hashed".into(), "bad".into())
        .connect(&url)
        .await
        .expect_err("refused");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
    );
    s.shutdown().await;
}
